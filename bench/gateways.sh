#!/usr/bin/env bash
# Gateway checks against Introspect on a cache hit: throughput of Introspect, Envoy's Check and
# /v1/forward-auth on one release server (SQLite, one seeded token), with the server pinned to
# CPU 0 and the load generators to CPU 1 (taskset), and a health check as the ceiling. The tonic
# load generator drives the gRPC calls; ApacheBench (`ab`, Debian's apache2-utils, keep-alive)
# drives forward-auth, so compare forward-auth's figures with care; bench/instructions.sh gives
# the steadier per-request cost.
# Tunables: DURATION (5s), CONCURRENCY (16), REQUESTS for ab (100000).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-16}
REQUESTS=${REQUESTS:-100000}

cargo build --release --locked -q -p service-accounts-api -p service-accounts-loadgen
BIN=$PWD/target/release/service-accounts
LOAD=$PWD/target/release/loadgen
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

taskset -c 0 "$BIN" serve --listen 127.0.0.1:50301 --http-listen 127.0.0.1:50302 \
  --data-dir "$WORK" >"$WORK/server.log" 2>&1 &
"$LOAD" ready --target http://127.0.0.1:50301
jwt=$("$BIN" admin-token --data-dir "$WORK" --org-id bench --user-id bench)
ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50301 --name gateways --tokens 1 \
  --out "$WORK/token.txt" >/dev/null
token=$(cat "$WORK/token.txt")

for rpc in introspect check health; do
  taskset -c 1 "$LOAD" load --target http://127.0.0.1:50301 --rpc "$rpc" --tokens "$WORK/token.txt" \
    --duration "$DURATION" --warmup 1s --concurrency "$CONCURRENCY" --connections 2 --label "$rpc"
done
taskset -c 1 ab -q -k -n 1000 -c "$CONCURRENCY" -H "Authorization: Bearer $token" \
  http://127.0.0.1:50302/v1/forward-auth >/dev/null
taskset -c 1 ab -q -k -n "$REQUESTS" -c "$CONCURRENCY" -H "Authorization: Bearer $token" \
  http://127.0.0.1:50302/v1/forward-auth >"$WORK/ab.txt"
python3 - "$WORK/ab.txt" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests per second:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx responses:\s+(\d+)", text)
failed = int(re.search(r"Failed requests:\s+(\d+)", text).group(1))
p50 = re.search(r"\n\s+50%\s+(\d+)", text)
p99 = re.search(r"\n\s+99%\s+(\d+)", text)
print(json.dumps({"label": "forward-auth", "client": "ab -k", "rps": round(rps),
                  "failed": failed, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                  "p50_ms": int(p50.group(1)) if p50 else None,
                  "p99_ms": int(p99.group(1)) if p99 else None}))
PY
