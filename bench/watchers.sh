#!/usr/bin/env bash
# The change feed under load (docs/benchmarks.md, "Caller caches"): two release replicas on one
# fresh PostgreSQL database, 100 WatchChanges streams on replica B, and revocations made on
# replica A while both replicas serve open-loop Introspect hits at half the rate one replica
# saturates at. Prints, as JSON lines: the saturated rate, and the time from sending each
# revoke to its invalidation reaching the last of the watchers (and from the revoke's return).
#
# Needs PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# Tunables: WATCHERS (100), TRIALS (200), DURATION (10s); SERVER_CPU (0) / LOAD_CPU (1) pinning
# as in bench/introspect.sh (replica B and the generators share LOAD_CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

WATCHERS=${WATCHERS:-100}
TRIALS=${TRIALS:-200}
DURATION=${DURATION:-10s}
PG_ADMIN_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=sa_watch_$$
source bench/release.sh
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '\n### %s\n' "$*" >&2; }
PIN_A=(); PIN_B=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PIN_A=(taskset -c "${SERVER_CPU:-0}"); PIN_B=(taskset -c "${LOAD_CPU:-1}")
fi

psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $BENCH_DB" >/dev/null
PG_URL="${PG_ADMIN_URL%/*}/$BENCH_DB"
start() { # start NAME PORT PIN…
  local name=$1 port=$2; shift 2
  "$@" "$BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" --database-url "$PG_URL" \
    --log-format json --admin-trust-dev-key --max-tokens-per-service-account 100000 \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  "$LOAD" ready --target "http://127.0.0.1:$port"
}
start a 50202 "${PIN_A[@]}"
start b 50204 "${PIN_B[@]}"
jwt=$("$BIN" admin-token --data-dir "$WORK/a" --org-id bench --user-id bench)
ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50202 --name hits --tokens 1000 \
  --out "$WORK/hits.txt" >/dev/null
account=$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50202 --name watched)

say "saturated Introspect hit rate of one replica (closed loop, 16 streams)"
saturated=$("${PIN_B[@]}" "$LOAD" load --target http://127.0.0.1:50202 --rpc introspect \
  --tokens "$WORK/hits.txt" --concurrency 16 --connections 2 --duration "$DURATION" --warmup 2s \
  --label saturated)
echo "$saturated"
half=$(python3 -c "import json,sys; print(int(json.loads(sys.argv[1])['rps'] / 2))" "$saturated")

say "$WATCHERS watchers on B; revocations on A; both replicas at $half hits/s each"
background=()
for port in 50202 50204; do
  "${PIN_B[@]}" "$LOAD" load --target "http://127.0.0.1:$port" --rpc introspect \
    --tokens "$WORK/hits.txt" --rate "$half" --concurrency 16 --connections 2 \
    --duration 600s --warmup 0s >/dev/null &
  background+=($!)
done
sleep 2
ADMIN_JWT=$jwt "${PIN_B[@]}" "$LOAD" watch-propagation --writer http://127.0.0.1:50202 \
  --watched http://127.0.0.1:50204 --service-account-id "$account" \
  --watchers "$WATCHERS" --trials "$TRIALS" \
  | sed "s/^{/{\"label\":\"watch-propagation-loaded\",\"rate_each\":$half,/"
kill "${background[@]}" 2>/dev/null || true
wait "${background[@]}" 2>/dev/null || true
