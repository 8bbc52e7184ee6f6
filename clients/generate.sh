#!/usr/bin/env bash
# Regenerates every generated client from proto/ with its pinned, locally installed plugins.
# CI runs it and fails when the committed code differs from what it produces.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/python/generate.sh"
"$here/typescript/generate.sh"
