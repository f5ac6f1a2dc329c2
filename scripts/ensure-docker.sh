#!/usr/bin/env bash
# Make sure a Docker engine answers, the image bootstrap tool is there, and
# gVisor's runsc is registered with the engine as the runtime `runsc`.
# On Debian as root: install what is missing (docker.io, mmdebstrap, runsc) and
# start dockerd in the background (log in a file); elsewhere say what to install.
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
# gVisor is optional elsewhere (profiles with `runtime: runsc` need it); on Debian as root we install it.
command -v runsc >/dev/null 2>&1 || ! is_debian_root || missing+=(runsc)
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

# Register runsc in daemon.json (merged, other settings kept). `--network=host` makes gVisor use the
# network namespace Docker gives the container (only `lo` for --network none, the session's internal
# network otherwise) instead of its own netstack: Debian's runsc (2022) refuses its netstack on kernels
# from 6.x on, mistaking every namespace for the host's.
DAEMON_JSON="${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"
register_runsc() {
  command -v runsc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 1
  python3 - "$DAEMON_JSON" "$(command -v runsc)" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
wanted = {"path": runsc, "runtimeArgs": ["--network=host"]}
if config.get("runtimes", {}).get("runsc") == wanted:
    sys.exit(1)  # already registered
config.setdefault("runtimes", {})["runsc"] = wanted
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as out:
    json.dump(config, out, indent=2)
os.replace(path + ".tmp", path)
PY
}
has_runsc_runtime() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
if register_runsc; then
  say "Registered gVisor (runsc) as a Docker runtime in $DAEMON_JSON."
  if pgrep -x dockerd >/dev/null 2>&1; then
    kill -HUP "$(pgrep -x dockerd | head -n1)"  # dockerd reloads its runtimes on SIGHUP
    for _ in $(seq 1 20); do has_runsc_runtime && break; sleep 0.5; done
  fi
fi

if docker info >/dev/null 2>&1; then
  say "Docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)$(has_runsc_runtime && echo ', gVisor runtime runsc registered'))."
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
    say "Docker engine is up ($(docker version --format '{{.Server.Version}}')$(has_runsc_runtime && echo ', gVisor runtime runsc registered'))."
    exit 0
  fi
  sleep 1
done
say "dockerd did not answer within 60 s; see $LOG_DIR/dockerd.log"
tail -n 20 "$LOG_DIR/dockerd.log" >&2 || true
exit 1
