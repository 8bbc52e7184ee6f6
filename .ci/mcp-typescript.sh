#!/usr/bin/env bash
# The TypeScript MCP verifier end to end: builds clients/typescript and runs test/mcp.test.ts,
# which starts the release server binary itself, serves examples/mcp-server.ts in-process and
# drives it with the MCP SDK's own client (allowed read, missing scope, app not granted, no token,
# malformed and revoked tokens, control plane stopped, fallback verifier, expiry); and
# test/cache.test.ts, the caller-side cache (src/cache.ts): its rules against a fake control plane
# (in-flight answers across an invalidation or a reset, feed down, staleness, brief and final
# answers, capacity, heap per cached token), then against the binary: every kind of change reaching
# the cache, local decisions equal to the server's, expiry on time, a frozen, cut or GOAWAY'd link
# (through a TCP proxy in the test), and the MCP verifier with the cache on.
#
# SERVICE_ACCOUNTS_BIN is the server binary (default: the release build in CARGO_TARGET_DIR, as
# .ci/run builds it). Runnable from any directory; needs Node.js and npm (the registry only when
# node_modules is missing or stale). Fails when a test fails and when no test ran.
set -euo pipefail
pkg_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../clients/typescript" && pwd)"
cd "$pkg_dir"

fail() {
  echo "mcp typescript: FAILED: $*" >&2
  exit 1
}

target_dir="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/service-accounts-ci/target}"
SERVICE_ACCOUNTS_BIN="${SERVICE_ACCOUNTS_BIN:-$target_dir/release/service-accounts}"
[ -x "$SERVICE_ACCOUNTS_BIN" ] || fail "no server binary at $SERVICE_ACCOUNTS_BIN (set SERVICE_ACCOUNTS_BIN)"
export SERVICE_ACCOUNTS_BIN

# The locked toolchain and SDK: npm ci only when node_modules is missing or older than the lock.
if [[ ! -x node_modules/.bin/tsc || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --silent --no-audit --no-fund
fi
npm run --silent build

tests=(dist/test/mcp.test.js dist/test/cache.test.js)
for t in "${tests[@]}"; do
  [ -f "$t" ] || fail "$t was not built"
done

tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
status=0
node --test \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" \
  "${tests[@]}" || status=$?

# `node --test` reports a test file without tests as one passing test (the file itself), and an
# empty describe() as a passing suite: count the cases inside the suites (the test files put
# theirs in a describe()), which TAP indents.
ran=$(grep -cE '^[[:space:]]+(not )?ok [0-9]+ - ' "$tap" || true)
failed=$(grep -cE '^[[:space:]]*not ok [0-9]+ - ' "$tap" || true)
[ "$status" -eq 0 ] || fail "node --test exited $status"
[ "$failed" -eq 0 ] || fail "$failed tests failed"
[ "$ran" -gt 0 ] || fail "no test ran"
echo "mcp typescript: OK: $ran tests passed against $SERVICE_ACCOUNTS_BIN"
