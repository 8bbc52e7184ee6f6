#!/usr/bin/env bash
# The introspection benchmark (docs/benchmarks.md): starts release servers on SQLite and on
# PostgreSQL, seeds tokens, and measures
#   a  Introspect cache hits over 1,000 tokens
#   b  Introspect misses to PostgreSQL over 1,000,000 seeded tokens (server defaults, then as
#      many connections and queries as pgbench), against pgbench running the same lookup as raw SQL
#   c  the scanner/bug flood: malformed and unknown-but-well-formed tokens
#   d  grpc.health.v1.Health/Check, the ceiling, under the same load
# plus revocation and disable propagation between two replicas (also while both serve hits at half
# the saturated rate), cache memory per entry, an open-loop run at half the saturated hit rate,
# and an h2load cross-check of the ceiling.
#
# Needs: PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# pgbench and psql (Debian's postgresql-client); h2load (nghttp2-client) is used when present.
# Tunables: DURATION (10s), WARMUP (2s), CONCURRENCY (64), CONNECTIONS (4), MISS_TOKENS (1000000),
# SERVER_CPU (0) and LOAD_CPU (1): with two or more CPUs, every server runs pinned to SERVER_CPU
# and every load generator to LOAD_CPU (taskset), so that neither waits for the other's core;
# the second replica of the propagation runs gets LOAD_CPU. PIN=0 turns pinning off.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
MISS_TOKENS=${MISS_TOKENS:-1000000}
PG_ADMIN_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN_URL%/*}
BENCH_DB=sa_bench_$$

source bench/release.sh
RESULTS=$WORK/results.jsonl
PIDS=()
declare -A PORT_PID
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n### %s\n' "$*" >&2; }

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PINNING=""
[ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && PINNING=1
# pin CPU: the command prefix that runs a program on CPU (nothing without pinning); an array,
# so that a backgrounded server's $! is the server itself.
pin() { PIN_CMD=(); [ -z "$PINNING" ] || PIN_CMD=(taskset -c "$1"); }

# start NAME PORT [flags…]: starts a server in the background and waits until it is ready.
start() {
  local name=$1 port=$2; shift 2
  # A benchmark setup: admin JWTs come from the development key, on PostgreSQL too, and one
  # account holds the 1,000 tokens the hit test cycles through (beyond the default quota).
  pin "${CPU:-$SERVER_CPU}"
  "${PIN_CMD[@]}" "$BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" \
    --log-format json --admin-trust-dev-key \
    --max-tokens-per-service-account 100000 "$@" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  PORT_PID[$port]=$!
  eval "PID_$name=$!"
  # Health says SERVING once storage answers and migrations have run.
  if ! "$LOAD" ready --target "http://127.0.0.1:$port"; then
    echo "server $name did not start:" >&2; cat "$WORK/$name.log" >&2; return 1
  fi
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

load() { # load LABEL PORT RPC [extra loadgen flags…]: also reports the server's CPU per request
  local label=$1 port=$2 rpc=$3; shift 3
  local pid=${PORT_PID[$port]} before after line
  before=$(cpu_ticks "$pid")
  pin "$LOAD_CPU"
  line=$("${PIN_CMD[@]}" "$LOAD" load --target "http://127.0.0.1:$port" --rpc "$rpc" --label "$label" \
    --duration "$DURATION" --warmup "$WARMUP" --concurrency "${STREAMS:-$CONCURRENCY}" \
    --connections "${CONNS:-$CONNECTIONS}" "$@")
  after=$(cpu_ticks "$pid")
  # Server CPU over warm-up and measurement, per measured request (an upper bound).
  python3 -c "import json,os,sys
r=json.loads(sys.argv[1]); ticks=int(sys.argv[3])-int(sys.argv[2])
r['server_cpu_us_per_req']=round(ticks*1e6/os.sysconf('SC_CLK_TCK')/max(r['requests'],1),1)
print(json.dumps(r))" "$line" "$before" "$after" | tee -a "$RESULTS"
}

field() { # field LABEL KEY: a number from the results
  python3 -c "import json,sys
for line in open('$RESULTS'):
    r=json.loads(line)
    if r.get('label')=='$1': print(r['$2']); break" ; }

flood_file() { # flood_file OUT: malformed strings and 1,000 well-formed tokens nobody issued
  "$LOAD" gen-tokens --count 1000 --service-account-id x --org-id x \
    --csv /dev/null --plaintexts "$WORK/unknown.txt"
  python3 - "$WORK/unknown.txt" "$1" <<'PY'
import sys, random
unknown = open(sys.argv[1]).read().split()
malformed = ["", "Bearer", "emb_sa_", "emb_sa_" + "A" * 43, "not-a-token", "x" * 50]
malformed += [t[:-1] + ("A" if t[-1] != "A" else "B") for t in unknown[:500]]  # bad checksum
lines = unknown + malformed * 2
random.Random(7).shuffle(lines)
open(sys.argv[2], "w").write("\n".join(l if l else "-" for l in lines) + "\n")
PY
}

scenario_set() { # scenario_set BACKEND PORT: a, c, d and the open-loop run on one server
  local backend=$1 port=$2 jwt
  jwt=$("$BIN" admin-token --data-dir "$WORK/$backend" --org-id bench --user-id bench)
  ADMIN_JWT=$jwt "$LOAD" seed --target "http://127.0.0.1:$port" --name "hits" --tokens 1000 \
    --out "$WORK/$backend-hits.txt" >/dev/null
  say "$backend: a) Introspect cache hits, 1,000 tokens"
  load "$backend-a-hits" "$port" introspect --tokens "$WORK/$backend-hits.txt"
  say "$backend: c) flood of malformed and unknown well-formed tokens"
  load "$backend-c-flood" "$port" introspect --tokens "$WORK/flood.txt"
  say "$backend: d) Health/Check ceiling"
  load "$backend-d-health" "$port" health
  say "$backend: a) one request at a time (unloaded latency)"
  STREAMS=1 CONNS=1 load "$backend-a-serial" "$port" introspect --tokens "$WORK/$backend-hits.txt"
  # Open loop needs only rate × latency streams in flight; a few connections and 16 streams
  # keep the generator's own bursts small. Half of the closed-loop rate at the same settings.
  say "$backend: a) closed loop with 16 streams, then open loop at half that rate"
  STREAMS=16 CONNS=2 load "$backend-a-16" "$port" introspect --tokens "$WORK/$backend-hits.txt"
  local half
  half=$(python3 -c "print(int($(field "$backend-a-16" rps) / 2))")
  STREAMS=16 CONNS=2 load "$backend-a-open-half" "$port" introspect --tokens "$WORK/$backend-hits.txt" \
    --rate "$half"
  STREAMS=16 CONNS=2 load "$backend-a-open-quarter" "$port" introspect --tokens "$WORK/$backend-hits.txt" \
    --rate "$((half / 2))"
  h2load_open "$backend-a-open-half-h2load" "$port" "$half" "$(head -n 1 "$WORK/$backend-hits.txt")"
}

# h2load_open LABEL PORT RATE TOKEN: the open-loop run again from h2load, an independent client
# in C: 16 connections of one stream, each at RATE/16 requests a second, every request's time
# read from its log. h2load times each request from its actual send (no correction for
# coordinated omission), so it shows the server's part of the tail without the load
# generator's own lateness.
h2load_open() {
  command -v h2load >/dev/null || return 0
  local label=$1 port=$2 rate=$3 token=$4
  "$LOAD" grpc-body --rpc introspect --token "$token" --out "$WORK/$label.bin"
  pin "$LOAD_CPU"
  "${PIN_CMD[@]}" h2load -c 16 -m 1 -t 1 --rps $((rate / 16)) -D "${DURATION%s}" \
    --warm-up-time="${WARMUP%s}" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$WORK/$label.bin" --log-file="$WORK/$label.log" \
    "http://127.0.0.1:$port/embrace.serviceaccounts.v1.TokenIntrospection/Introspect" \
    >"$WORK/$label.txt" 2>&1 || { cat "$WORK/$label.txt" >&2; return 0; }
  python3 - "$WORK/$label.log" "$label" "$rate" "${DURATION%s}" <<'PY' | tee -a "$RESULTS"
import json, sys
times = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(json.dumps({"label": sys.argv[2], "mode": f"open-loop@{sys.argv[3]} (h2load)",
                  "requests": len(times), "rps": round(len(times) / float(sys.argv[4])),
                  "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999),
                  "max_us": times[-1]}))
PY
}

flood_file "$WORK/flood.txt"

# --- SQLite ---------------------------------------------------------------------------------
start sqlite 50101
scenario_set sqlite 50101

# --- PostgreSQL -----------------------------------------------------------------------------
psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $BENCH_DB" >/dev/null
PG_URL="$PG_BASE/$BENCH_DB"
start pg 50102 --database-url "$PG_URL"
scenario_set pg 50102

say "b) seeding $MISS_TOKENS tokens for the miss test"
jwt=$("$BIN" admin-token --data-dir "$WORK/pg" --org-id bench --user-id bench)
miss_account=$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50102 --name misses)
"$LOAD" gen-tokens --count "$MISS_TOKENS" --service-account-id "$miss_account" --org-id bench \
  --csv "$WORK/miss.csv" --plaintexts "$WORK/miss-all.txt" --hashes "$WORK/miss-hashes.csv"
psql -q "$PG_URL" -c "\copy tokens (id, service_account_id, org_id, display_name, token_hash, scopes, hint, created_at, created_by) FROM '$WORK/miss.csv' WITH (FORMAT csv)"
psql -q "$PG_URL" -c "CREATE TABLE bench_hashes (n integer PRIMARY KEY, h bytea NOT NULL)" \
  -c "\copy bench_hashes FROM '$WORK/miss-hashes.csv' WITH (FORMAT csv)" -c "ANALYZE"
shuf --random-source=<(yes) "$WORK/miss-all.txt" > "$WORK/miss.txt"

# Every run below reads the same pages: load them first, so that whichever runs first does not
# pay for reading them from disk.
psql -q "$PG_URL" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" \
  -c "SELECT pg_prewarm(c.oid) FROM pg_class c WHERE c.relname IN ('tokens', 'service_accounts', 'bench_hashes') OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN ('tokens'::regclass, 'bench_hashes'::regclass))" >/dev/null

say "b) Introspect misses: cache disabled, random tokens out of $MISS_TOKENS, server defaults"
# 16 connections, 8 lookup queries at once: misses beyond that queue and go in batches.
start pg_nocache 50103 --database-url "$PG_URL" --introspection-cache-capacity 0
load pg-b-misses 50103 introspect --tokens "$WORK/miss.txt"
kill "$PID_pg_nocache"; wait "$PID_pg_nocache" 2>/dev/null || true

say "b) the same with as many connections and lookup queries as pgbench gets (one query per miss)"
start pg_nocache_64 50103 --database-url "$PG_URL" --introspection-cache-capacity 0 \
  --db-max-connections "$CONCURRENCY" --introspection-max-lookups "$CONCURRENCY"
load pg-b-misses-unbatched 50103 introspect --tokens "$WORK/miss.txt"
# Free its connections for pgbench (max_connections is 100 here).
kill "$PID_pg_nocache_64"; wait "$PID_pg_nocache_64" 2>/dev/null || true

say "b) the same lookup as raw SQL with pgbench"
cat > "$WORK/lookup.sql" <<'SQL'
\set n random(1, :tokens)
SELECT t.*, a.* FROM tokens t JOIN service_accounts a ON a.id = t.service_account_id
 WHERE t.token_hash = (SELECT h FROM bench_hashes WHERE n = :n);
SQL
pin "$LOAD_CPU"
"${PIN_CMD[@]}" pgbench -n -M prepared -f "$WORK/lookup.sql" -D tokens="$MISS_TOKENS" -c "$CONCURRENCY" -j 2 \
  -T "${DURATION%s}" "$PG_URL" > "$WORK/pgbench.txt" 2>&1
cat "$WORK/pgbench.txt" >&2
pg_latency_ms=$(awk '/latency average/ { print $4 }' "$WORK/pgbench.txt")
pg_tps=$(awk '/^tps/ { print $3; exit }' "$WORK/pgbench.txt")
echo "{\"label\":\"pgbench-lookup\",\"rps\":$pg_tps,\"mean_us\":$(python3 -c "print(round($pg_latency_ms*1000))")}" | tee -a "$RESULTS"

say "revocation propagation: two replicas on one PostgreSQL"
CPU=$LOAD_CPU start pg_replica 50104 --database-url "$PG_URL"
prop_account=$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50102 --name propagation)
ADMIN_JWT=$jwt "$LOAD" propagation --writer http://127.0.0.1:50102 --reader http://127.0.0.1:50104 \
  --service-account-id "$prop_account" --trials 200 \
  | sed 's/^{/{"label":"propagation",/' | tee -a "$RESULTS"
say "disable propagation: the same replicas, disabling the token's account"
disable_account=$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50102 --name disable-propagation)
ADMIN_JWT=$jwt "$LOAD" propagation --writer http://127.0.0.1:50102 --reader http://127.0.0.1:50104 \
  --service-account-id "$disable_account" --trials 200 --change disable \
  | sed 's/^{/{"label":"disable-propagation",/' | tee -a "$RESULTS"

say "revocation propagation while both replicas serve open-loop hits at half the saturated rate"
half=$(python3 -c "print(int($(field pg-a-16 rps) / 2))")
loaded_account=$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50102 --name loaded-propagation)
pin "$LOAD_CPU"
background=()
for port in 50102 50104; do
  "${PIN_CMD[@]}" "$LOAD" load --target "http://127.0.0.1:$port" --rpc introspect \
    --tokens "$WORK/pg-hits.txt" --rate "$half" --concurrency 16 --connections 2 \
    --duration 600s --warmup 0s >/dev/null &
  background+=($!)
done
sleep 3
ADMIN_JWT=$jwt "$LOAD" propagation --writer http://127.0.0.1:50102 --reader http://127.0.0.1:50104 \
  --service-account-id "$loaded_account" --trials 200 \
  | sed "s/^{/{\"label\":\"propagation-loaded\",\"rate_each\":$half,/" | tee -a "$RESULTS"
kill "${background[@]}" 2>/dev/null || true
wait "${background[@]}" 2>/dev/null || true

say "memory per cached entry (bench/memory.sh, one run)"
RUNS=1 bash bench/memory.sh | tee -a "$RESULTS"

say "admin writes during a last-used flush of 100,000 tokens (bench/flush.sh)"
bash bench/flush.sh | tee -a "$RESULTS"

if command -v h2load >/dev/null; then
  say "h2load cross-check (independent client) against the SQLite server"
  "$LOAD" grpc-body --rpc health --out "$WORK/health.bin"
  "$LOAD" grpc-body --rpc introspect --token "$(head -n 1 "$WORK/sqlite-hits.txt")" --out "$WORK/introspect.bin"
  for rpc in health introspect; do
    case $rpc in
      health) path=/grpc.health.v1.Health/Check ;;
      introspect) path=/embrace.serviceaccounts.v1.TokenIntrospection/Introspect ;;
    esac
    h2load -n 300000 -c "$CONNECTIONS" -m $((CONCURRENCY / CONNECTIONS)) -t 1 \
      -H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/$rpc.bin" \
      "http://127.0.0.1:50101$path" > "$WORK/h2load-$rpc.txt" 2>&1 || true
    grep -E '^finished in|^requests:' "$WORK/h2load-$rpc.txt" >&2
    rps=$(awk '/^finished in/ { print $4 }' "$WORK/h2load-$rpc.txt")
    echo "{\"label\":\"h2load-$rpc\",\"rps\":${rps:-0}}" | tee -a "$RESULTS"
  done
fi

say "summary"
python3 - "$RESULTS" <<'PY'
import json, sys
r = {}
for line in open(sys.argv[1]):
    row = json.loads(line)
    r[row["label"]] = row
def ratio(a, b, key="rps"):
    return r[a][key] / r[b][key] if a in r and b in r and r[b][key] else float("nan")
for backend in ("sqlite", "pg"):
    print(f"{backend}: a/d = {ratio(f'{backend}-a-hits', f'{backend}-d-health'):.2f}   "
          f"c/d = {ratio(f'{backend}-c-flood', f'{backend}-d-health'):.2f}   "
          f"hit p99 / p99.9 at half rate = {r[f'{backend}-a-open-half']['p99_us']} / "
          f"{r[f'{backend}-a-open-half']['p999_us']} us (generator's own send lag p99 "
          f"{r[f'{backend}-a-open-half']['send_lag_p99_us']} us), "
          f"p99 at a quarter = {r[f'{backend}-a-open-quarter']['p99_us']} us")
    h2 = r.get(f"{backend}-a-open-half-h2load")
    if h2:
        print(f"{backend}: h2load at half rate: p50 {h2['p50_us']} us, p99 {h2['p99_us']} us, "
              f"p99.9 {h2['p999_us']} us")
for backend in ("sqlite", "pg"):
    a, d = r[f"{backend}-a-hits"], r[f"{backend}-d-health"]
    print(f"{backend}: server CPU per request: introspect hit {a['server_cpu_us_per_req']} us, "
          f"flood {r[f'{backend}-c-flood']['server_cpu_us_per_req']} us, health {d['server_cpu_us_per_req']} us; "
          f"unloaded hit p50 {r[f'{backend}-a-serial']['p50_us']} us p99 {r[f'{backend}-a-serial']['p99_us']} us")
print(f"b/pgbench mean latency = {ratio('pg-b-misses', 'pgbench-lookup', 'mean_us'):.2f} "
      f"({r['pg-b-misses']['mean_us']} us vs {r['pgbench-lookup']['mean_us']} us); "
      f"throughput {r['pg-b-misses']['rps']:.0f}/s vs {r['pgbench-lookup']['rps']:.0f}/s; "
      f"one query per miss: {ratio('pg-b-misses-unbatched', 'pgbench-lookup', 'mean_us'):.2f} "
      f"({r['pg-b-misses-unbatched']['mean_us']} us, {r['pg-b-misses-unbatched']['rps']:.0f}/s)")
for label in ("propagation", "disable-propagation", "propagation-loaded"):
    p = r[label]
    print(f"{label} over {p['trials']} trials: p50 {p['p50_us']} us, p99 {p['p99_us']} us, max {p['max_us']} us")
m = r["memory"]
print(f"memory: {m['bytes_per_entry']} bytes per cached entry, {m['tokens']} tokens over "
      f"{m['accounts']} accounts (RSS {m['rss_before_kib']} -> {m['rss_after_kib']} KiB)")
for line in open(sys.argv[1]):
    f = json.loads(line)
    if f.get("label") == "flush":
        w = f["admin_writes"]
        d = f["during_flush"]
        print(f"flush of {f['tokens']} tokens on {f['backend']} ({d['flush_ms']} ms): worst of the "
              f"{d['writes']} admin writes during it {d['max_us']} us; over the whole run p50 "
              f"{w['p50_us']} us, p99 {w['p99_us']} us, worst {w['max_us']} us "
              f"({f['used_after']} written)")
for rpc in ("health", "introspect"):
    if f"h2load-{rpc}" in r:
        print(f"h2load {rpc}: {r[f'h2load-{rpc}']['rps']:.0f}/s")
PY
