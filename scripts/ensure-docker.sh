#!/usr/bin/env bash
# Make sure a Docker engine answers and the image bootstrap tool is there.
# On Debian as root: install what is missing (docker.io, mmdebstrap) and start
# dockerd in the background (log in a file); elsewhere say what to install.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

LOG_DIR="${DOCKERD_LOG_DIR:-/var/log}"
say() { echo "[ensure-docker] $*" >&2; }

is_debian_root() {
  [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null
}

missing=()
command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || missing+=(docker.io iptables)
# mmdebstrap bootstraps the base image when no BASE_IMAGE (registry) is used.
[ -n "${BASE_IMAGE:-}" ] || command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if ! is_debian_root; then
    say "Missing: ${missing[*]}. Install Docker (https://docs.docker.com/engine/install/) and mmdebstrap"
    say "(or set BASE_IMAGE to a Debian bookworm image from your registry), start Docker, then retry."
    exit 1
  fi
  say "Installing Debian packages: ${missing[*]} (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if docker info >/dev/null 2>&1; then
  say "Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))."
  exit 0
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
