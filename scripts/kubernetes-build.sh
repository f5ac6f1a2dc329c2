#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 binaries for the project's single-node test cluster, offline, from Debian
# bookworm's source package with Go 1.15 from bullseye (see ../shared/kubernetes-offline.md for why this
# route), plus the pause image's static binary. The result is cached outside the checkout, keyed by the
# source version and this script's content, so it is built once per machine (about 5 minutes on 2 cores).
#
# Prints the cache directory holding bin/ on its last line.
set -euo pipefail

SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_GIT_VERSION="v1.20.2"
CACHE_ROOT="${MCP_RUNNER_CACHE:-/var/cache/mcp-runner}"
WHAT=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl)
GO_PACKAGES=(golang-1.15-go golang-1.15-src)
# The cache key: every input of the build (not this script's comments, so editing them rebuilds nothing).
RECIPE="$SOURCE_VERSION ${WHAT[*]} ${GO_PACKAGES[*]} CGO_ENABLED=0 pause-static-gcc"
key="$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
OUT="$CACHE_ROOT/kubernetes-$KUBE_GIT_VERSION-$key"

say() { echo "[kubernetes-build] $*" >&2; }

if [[ -x "$OUT/bin/kubelet" && -x "$OUT/bin/pause" ]]; then
    say "binaries cached in $OUT"
    echo "$OUT"
    exit 0
fi

[[ $EUID -eq 0 ]] || { say "must run as root (apt-get); cached binaries were not found in $OUT"; exit 1; }

work="$CACHE_ROOT/build-$key"
rm -rf "$work"
mkdir -p "$work"

# A private apt configuration: bookworm sources for the source package, bullseye for Go 1.15, without
# touching the machine's own sources or package lists.
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat > "$apt_dir/sources.list" <<SRC
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bullseye main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
          -o "APT::Architecture=$(dpkg --print-architecture)" -o "Acquire::Languages=none"
          -o "APT::Sandbox::User=root")  # the private dirs are root's: no "unsandboxed" warning per file
say "reading package lists for the kubernetes source and Go 1.15 (private apt state in $apt_dir)"
apt-get "${apt_opts[@]}" -qq update

if ! command -v rsync >/dev/null || ! command -v dpkg-source >/dev/null; then
    say "installing rsync and dpkg-dev (the Kubernetes make rules need them)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync dpkg-dev >/dev/null
fi

say "downloading the source package kubernetes=$SOURCE_VERSION"
(cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only "kubernetes=$SOURCE_VERSION")
(cd "$work" && dpkg-source --no-check -x ./*.dsc src >/dev/null)

say "unpacking Go 1.15 (golang-1.15-go, golang-1.15-src) as a private GOROOT"
(cd "$apt_dir/archives" && apt-get "${apt_opts[@]}" -qq download "${GO_PACKAGES[@]}")
mkdir -p "$work/go"
for deb in "$apt_dir"/archives/golang-1.15-*.deb; do dpkg -x "$deb" "$work/go"; done
export GOROOT="$work/go/usr/lib/go-1.15"
export PATH="$GOROOT/bin:$PATH"
export GOPATH="$work/gopath" GOCACHE="$work/gocache"
go version >&2

say "building ${WHAT[*]} (about 5 minutes on 2 cores)"
(cd "$work/src" && GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0 KUBE_GIT_VERSION="$KUBE_GIT_VERSION" \
    make WHAT="${WHAT[*]}" >"$work/build.log" 2>&1) || { tail -40 "$work/build.log" >&2; exit 1; }

say "building the pause binary (static) from build/pause"
pause_src="$work/src/build/pause/linux/pause.c"
[[ -f "$pause_src" ]] || pause_src="$work/src/build/pause/pause.c"
gcc -Os -Wall -Werror -static -DVERSION="$KUBE_GIT_VERSION-mcp-runner" -o "$work/pause" "$pause_src"

staging="$OUT.partial"
rm -rf "$staging"
mkdir -p "$staging/bin"
cp "$work"/src/_output/local/bin/linux/*/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl} "$staging/bin/"
cp "$work/pause" "$staging/bin/pause"
rm -rf "$OUT"
mv "$staging" "$OUT"
rm -rf "$work"
say "binaries cached in $OUT"
echo "$OUT"
