#!/usr/bin/env bash
# Regenerates src/embrace/serviceaccounts/v1/*_pb2*.py{,i} from ../../proto with buf and the
# pinned grpcio-tools and mypy-protobuf. Needs python3 (3.9+) and npm; everything else is
# installed here, under .venv-generate/ and .tools/ (both gitignored). Safe to run from any
# directory, and repeatedly: the output is deterministic, so a second run changes nothing.
set -euo pipefail

BUF_VERSION=1.75.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# grpcio-tools (protoc and the Python generators) and mypy-protobuf (the .pyi stubs), pinned in
# tools/requirements-generate.txt.
if [[ ! -x .venv-generate/bin/python ]]; then
  "${PYTHON:-python3}" -m venv .venv-generate
fi
.venv-generate/bin/python -m pip install --quiet --disable-pip-version-check \
  -r tools/requirements-generate.txt

# buf, from npm.
buf=.tools/node_modules/.bin/buf
if [[ "$("$buf" --version 2>/dev/null || true)" != "$BUF_VERSION" ]]; then
  npm install --prefix .tools --no-audit --no-fund --ignore-scripts --save-exact \
    "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi

# Remove the previous output so that files of deleted protos do not linger, then generate.
find src -type f \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \
  -o -name '*_pb2_grpc.pyi' \) -delete
"$buf" generate --template buf.gen.yaml
count="$(find src -type f -name '*_pb2*' | wc -l | tr -d ' ')"
echo "generated: $count files under clients/python/src"
