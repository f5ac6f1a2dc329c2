#!/usr/bin/env bash
# Regenerate the committed gRPC stubs in runner/api/_proto from proto/.
#
# protoc writes absolute imports rooted at the proto include path
# ("from mcp_runner.v1 import runner_pb2"); we rewrite them to the package
# path the stubs live under so they import without touching sys.path.
#
# OUT (default runner/api/_proto) is where they go; the unit tests generate into a temporary directory.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
OUT="${OUT:-runner/api/_proto}"

mkdir -p "$OUT/mcp_runner/v1"
"$PYTHON" -m grpc_tools.protoc -Iproto \
    --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
    proto/mcp_runner/v1/runner.proto

for f in "$OUT"/mcp_runner/v1/*_pb2*.py "$OUT"/mcp_runner/v1/*_pb2*.pyi; do
    sed -i -E 's/^from mcp_runner\.v1 import /from runner.api._proto.mcp_runner.v1 import /' "$f"
done

# grpc_tools writes its own version as the grpcio the stubs demand at import (GRPC_GENERATED_VERSION): a venv's
# newer grpcio-tools would make stubs the service image (grpcio pinned in sandbox_images/service/requirements.txt)
# refuses to import. They demand pyproject's grpcio floor instead, which the image's pin must meet.
FLOOR=$("$PYTHON" -c '
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(m.group(1) for d in deps if (m := re.fullmatch(r"grpcio>=([0-9.]+)", d))))
')
sed -i -E "s/^GRPC_GENERATED_VERSION = '[^']*'\$/GRPC_GENERATED_VERSION = '$FLOOR'/" "$OUT"/mcp_runner/v1/runner_pb2_grpc.py
grep -q "^GRPC_GENERATED_VERSION = '$FLOOR'\$" "$OUT"/mcp_runner/v1/runner_pb2_grpc.py

for d in "$OUT" "$OUT/mcp_runner" "$OUT/mcp_runner/v1"; do
    [ -f "$d/__init__.py" ] || echo '"""Generated gRPC stubs; regenerate with scripts/gen-proto.sh."""' > "$d/__init__.py"
done
echo "generated stubs in $OUT/mcp_runner/v1"
