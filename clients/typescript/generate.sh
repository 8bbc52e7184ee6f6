#!/usr/bin/env bash
# Regenerates src/gen/ from ../../proto (and the vendored google.rpc protos in proto-vendor/)
# with the pinned buf and protoc-gen-es from package-lock.json. Runnable from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Install the locked versions when node_modules is missing or older than package-lock.json.
if [[ ! -x node_modules/.bin/buf || ! -x node_modules/.bin/protoc-gen-es ||
      package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
node_modules/.bin/buf generate
