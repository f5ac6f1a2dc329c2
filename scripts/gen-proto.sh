#!/usr/bin/env bash
# Regenerate the committed gRPC stubs in runner/api/_proto from proto/.
#
# protoc writes absolute imports rooted at the proto include path
# ("from mcp_runner.v1 import runner_pb2"); we rewrite them to the package
# path the stubs live under so they import without touching sys.path.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
OUT=runner/api/_proto

mkdir -p "$OUT/mcp_runner/v1"
"$PYTHON" -m grpc_tools.protoc -Iproto \
    --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
    proto/mcp_runner/v1/runner.proto

for f in "$OUT"/mcp_runner/v1/*_pb2*.py "$OUT"/mcp_runner/v1/*_pb2*.pyi; do
    sed -i -E 's/^from mcp_runner\.v1 import /from runner.api._proto.mcp_runner.v1 import /' "$f"
done

for d in "$OUT" "$OUT/mcp_runner" "$OUT/mcp_runner/v1"; do
    [ -f "$d/__init__.py" ] || echo '"""Generated gRPC stubs; regenerate with scripts/gen-proto.sh."""' > "$d/__init__.py"
done
echo "generated stubs in $OUT/mcp_runner/v1"
