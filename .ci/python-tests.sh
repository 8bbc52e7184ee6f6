#!/usr/bin/env bash
# Runs the Python client's tests, clients/python/tests, against the real control plane:
# test_mcp.py (the MCP verifier, embrace.serviceaccounts.mcp, with the real `mcp` SDK and its
# client), test_cache.py (the caller cache, embrace.serviceaccounts.cache, kept by WatchChanges)
# and test_rfc7662.py (`POST /oauth2/introspect` with Authlib, on SQLite and PostgreSQL,
# over HTTP and HTTPS); control_plane.py starts the binary for both. A fresh virtualenv gets
# `pip install -e "clients/python[mcp]"` with the versions pinned in
# clients/python/tools/requirements-tests.txt, mypy --strict checks the module and the tests, and
# pytest runs clients/python/tests with RFC7662_TESTS=1, so that no module is skipped for want of
# its dependencies; collecting no test fails.
#
# SERVICE_ACCOUNTS_BIN: the binary (default: the CI build's release binary). TEST_DATABASE_URL:
# the PostgreSQL server on which test_rfc7662.py creates (and drops) its databases; with CI set,
# a missing one fails. Needs python3, psql and PyPI; runs from any directory and leaves nothing
# behind.
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
  -e "clients/python[mcp]" -r clients/python/tools/requirements-tests.txt
"$tmp/venv/bin/python" -c 'import importlib.metadata as m; print(*(f"{p} {m.version(p)}" for p in ("mcp", "Authlib", "httpx2")), sep=", ")'

# The module is installed (editable), so a check of code that imports it would not report its
# errors: check it by path, with the tests (tests/ on MYPYPATH: they import control_plane).
# types-Authlib leaves some of Authlib's functions untyped: calling those is no error.
MYPYPATH=clients/python/src:clients/python/tests "$tmp/venv/bin/mypy" --strict \
  --explicit-package-bases --untyped-calls-exclude=authlib \
  --config-file clients/python/pyproject.toml --cache-dir "$tmp/mypy-cache" \
  clients/python/src/embrace/serviceaccounts/mcp.py clients/python/src/embrace/serviceaccounts/cache.py \
  clients/python/tests/*.py

status=0
RFC7662_TESTS=1 PYTHONDONTWRITEBYTECODE=1 "$tmp/venv/bin/python" -m pytest -p no:cacheprovider -q \
  clients/python/tests || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests in clients/python/tests" >&2
  exit 1
fi
exit "$status"
