#!/usr/bin/env bash
# Make sure a Docker engine answers. On Debian as root with none installed,
# install docker.io and start dockerd in the background (log in a file);
# elsewhere say what to install. Idempotent: does nothing when `docker info` works.
set -euo pipefail

LOG_DIR="${DOCKERD_LOG_DIR:-/var/log}"
say() { echo "[ensure-docker] $*" >&2; }

if docker info >/dev/null 2>&1; then
  say "Docker engine answers; nothing to do."
  exit 0
fi

is_debian_root() {
  [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null
}

if ! command -v dockerd >/dev/null 2>&1; then
  if ! is_debian_root; then
    say "No Docker engine found. Install Docker (https://docs.docker.com/engine/install/) and start it, then retry."
    exit 1
  fi
  say "No Docker engine: installing Debian's docker.io (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends docker.io iptables mmdebstrap >&2
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  if ! is_debian_root; then
    say "dockerd is installed but not running; start it (e.g. 'sudo systemctl start docker') and retry."
    exit 1
  fi
  say "Starting dockerd in the background (log: $LOG_DIR/dockerd.log)..."
  mkdir -p "$LOG_DIR"
  nohup dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    say "Docker engine is up ($(docker version --format '{{.Server.Version}}'))."
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within 60 s; see $LOG_DIR/dockerd.log"
tail -n 20 "$LOG_DIR/dockerd.log" >&2 || true
exit 1
