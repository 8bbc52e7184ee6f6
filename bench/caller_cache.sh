#!/usr/bin/env bash
# Caller caches, end to end (docs/benchmarks.md, "Caller caches"): an axum service behind
# `IntrospectLayer` with a caching client, against the same handler with no authentication,
# in the same process and the same run. The control plane (release, SQLite) and the service run
# on SERVER_CPU (0), h2load on LOAD_CPU (1). Prints a JSON line per run and the ratio.
#
# Needs h2load (Debian's nghttp2-client). Tunables: DURATION (10), CONNECTIONS (16), RUNS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
RUNS=${RUNS:-3}
command -v h2load >/dev/null || { echo "h2load is needed (apt-get install nghttp2-client)" >&2; exit 1; }
source bench/release.sh
cargo build --release --locked -q -p service-accounts-loadgen --bin guarded-service
SERVICE=${CARGO_TARGET_DIR:-$PWD/target}/release/guarded-service
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
PIN_SERVER=(); PIN_LOAD=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c "${SERVER_CPU:-0}"); PIN_LOAD=(taskset -c "${LOAD_CPU:-1}")
fi

"${PIN_SERVER[@]}" "$BIN" --listen 127.0.0.1:50302 --data-dir "$WORK/cp" >"$WORK/cp.log" 2>&1 &
PIDS+=($!)
"$LOAD" ready --target http://127.0.0.1:50302
jwt=$("$BIN" admin-token --data-dir "$WORK/cp" --org-id bench --user-id bench)
ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50302 --name caller --tokens 1 \
  --out "$WORK/token.txt" >/dev/null
token=$(head -n 1 "$WORK/token.txt")
CONTROL_PLANE=http://127.0.0.1:50302 GUARDED=127.0.0.1:8081 OPEN=127.0.0.1:8082 ORG_ID=bench \
  "${PIN_SERVER[@]}" "$SERVICE" >"$WORK/service.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -sf -o /dev/null -H "authorization: Bearer $token" http://127.0.0.1:8081/v1/hello && break
  sleep 0.1
done
# Warm the cache: the feed must be up before answers are kept.
for _ in $(seq 20); do curl -sf -o /dev/null -H "authorization: Bearer $token" http://127.0.0.1:8081/v1/hello; sleep 0.05; done

rps() { # rps PORT: requests per second of one h2load run (HTTP/1.1, keep-alive)
  "${PIN_LOAD[@]}" h2load --h1 -c "$CONNECTIONS" -D "$DURATION" --warm-up-time 2 \
    -H "authorization: Bearer $token" "http://127.0.0.1:$1/v1/hello" 2>&1 \
    | tee "$WORK/h2load-$1.txt" \
    | awk '/^finished in/ { gsub(",", "", $4); print $4 }'
}
check_ok() { # every request answered 2xx
  grep -q "0 failed, 0 errored" "$WORK/h2load-$1.txt" && grep -q "status codes: [0-9]* 2xx" "$WORK/h2load-$1.txt" \
    || { cat "$WORK/h2load-$1.txt" >&2; echo "requests failed on port $1" >&2; exit 1; }
  grep -q "status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$WORK/h2load-$1.txt" \
    || { cat "$WORK/h2load-$1.txt" >&2; echo "non-2xx answers on port $1" >&2; exit 1; }
}
all_guarded=0; all_open=0
for run in $(seq "$RUNS"); do
  guarded=$(rps 8081); check_ok 8081
  open=$(rps 8082); check_ok 8082
  python3 -c "import sys; g,o=float(sys.argv[1]),float(sys.argv[2]); print('{\"label\":\"caller-cache-axum\",\"run\":%s,\"guarded_rps\":%.0f,\"open_rps\":%.0f,\"ratio\":%.3f}' % (sys.argv[3], g, o, g/o))" "$guarded" "$open" "$run"
  all_guarded=$(python3 -c "print($all_guarded + $guarded)"); all_open=$(python3 -c "print($all_open + $open)")
done
# Every run together: the rate of each summed over the runs, which alternate between the two.
python3 -c "import sys; g,o=float(sys.argv[1]),float(sys.argv[2]); print('{\"label\":\"caller-cache-axum-all\",\"runs\":%s,\"ratio\":%.3f}' % (sys.argv[3], g/o))" "$all_guarded" "$all_open" "$RUNS"
