#!/usr/bin/env bash
# Type-checks the Python client's examples with `mypy --strict` against the generated .pyi stubs.
# A fresh virtualenv gets the client as its README installs it (`pip install -e clients/python`)
# plus mypy and the stub packages pinned in clients/python/tools/requirements-types.txt; the
# mypy settings are those of clients/python/pyproject.toml. Needs python3 and PyPI; runs from
# any directory and leaves nothing behind.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check \
  -e clients/python -r clients/python/tools/requirements-types.txt
"$tmp/venv/bin/mypy" --version
"$tmp/venv/bin/mypy" --strict --config-file clients/python/pyproject.toml \
  --cache-dir "$tmp/mypy-cache" clients/python/examples/*.py
