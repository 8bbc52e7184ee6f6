#!/usr/bin/env bash
# Tests the Python client's MCP verifier (clients/python, module embrace.serviceaccounts.mcp)
# against the real control plane and the real `mcp` SDK: a fresh virtualenv gets
# `pip install -e "clients/python[mcp]"` with the versions pinned in
# clients/python/tools/requirements-mcp.txt, mypy --strict checks the module, and pytest runs
# clients/python/tests, which start the release binary (SERVICE_ACCOUNTS_BIN, default: the CI
# build's) and the example MCP server themselves. Needs python3 and PyPI; runs from any
# directory and leaves nothing behind.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

target="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/service-accounts-ci/target}"
export SERVICE_ACCOUNTS_BIN="${SERVICE_ACCOUNTS_BIN:-$target/release/service-accounts}"
if [ ! -x "$SERVICE_ACCOUNTS_BIN" ]; then
  echo "no control-plane binary at $SERVICE_ACCOUNTS_BIN: build it (cargo build --release) or set SERVICE_ACCOUNTS_BIN" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check \
  -e "clients/python[mcp]" -r clients/python/tools/requirements-mcp.txt
"$tmp/venv/bin/python" -c 'import importlib.metadata as m; print("mcp", m.version("mcp"))'

# The module is installed (editable), so a check of code that imports it would not report its
# errors: check it by path, with the tests.
MYPYPATH=clients/python/src "$tmp/venv/bin/mypy" --strict --explicit-package-bases \
  --config-file clients/python/pyproject.toml --cache-dir "$tmp/mypy-cache" \
  clients/python/src/embrace/serviceaccounts/mcp.py clients/python/tests/test_mcp.py

status=0
PYTHONDONTWRITEBYTECODE=1 "$tmp/venv/bin/python" -m pytest -p no:cacheprovider -q \
  clients/python/tests || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests in clients/python/tests" >&2
  exit 1
fi
exit "$status"
