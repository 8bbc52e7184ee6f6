#!/usr/bin/env bash
# Capacity of one PostgreSQL primary (docs/operations.md, "Capacity"; docs/benchmarks.md): how
# admin writes and revocation propagation fare as more replicas LISTEN on the change channel, and
# how many connections a replica holds.
#
# Starts its own PostgreSQL 15 cluster (initdb into a temporary directory owned by `postgres`, on
# a free port from PG_PORT, default 55432; max_connections MAX_CONNECTIONS (1200), shared_buffers
# SHARED_BUFFERS (128MB), fsync, synchronous_commit and full_page_writes on, as Debian's default
# cluster has them), so that the machine's shared server is untouched; two release replicas on it:
# A on SERVER_CPU (0), B on LOAD_CPU (1), the load generators on LOAD_CPU; PostgreSQL unpinned.
#
# For each count of LISTENERS ("0 100 500 1000"), `loadgen listeners` opens that many extra
# connections that LISTEN on `service_accounts_changes` and read (and discard) every
# notification, as other replicas' listeners would (niced by LISTENER_NICE, 10, and unpinned:
# other replicas' listeners would run on other machines; not niced when sending heartbeats). Then, with them listening:
#   writes      `loadgen admin-writes` on A, one rename every WRITE_EVERY (20ms: 50/s) for
#               WRITE_DURATION (30s): p50/p99/max of each write
#   propagation `loadgen propagation`: create a token, introspect it on B, revoke it on A, poll B
#               until inactive; TRIALS (200), given up after PROPAGATION_TIMEOUT (300) seconds
#   closed      admin writes on A back to back (one at a time) for CLOSED_DURATION (10s)
#   notify      pgbench, NOTIFY_CLIENTS (8) clients for CLOSED_DURATION, each transaction one
#               `pg_notify` on the channel (a heartbeat-shaped payload the replicas ignore): the
#               primary's commit rate for notifying transactions
# plus the notification queue's use (pg_notification_queue_usage), PostgreSQL's CPU (cores) over
# the paced writes, the summed PSS of its processes, and what each extra listener received.
# HEARTBEAT_LISTENERS (unset) runs the same again for those counts with every extra listener
# also sending a heartbeat every 250 ms through a pool of 4 connections, as a replica does.
#
# Connections: counted per replica from pg_stat_activity joined with `ss` (client port to
# process), at idle, during the paced writes and propagation (the most seen), and under load: a
# third replica with its cache off serving 64 concurrent Introspect calls plus back-to-back admin
# writes (CONNECTION_LOAD=0 skips it).
#
# Output: JSON lines (also in RESULTS, default $TMPDIR/capacity.jsonl) and a table at the end.
# Needs: PostgreSQL 15 server binaries (PGBIN, /usr/lib/postgresql/15/bin), psql, pgbench, ss,
# runuser, python3; run as root (PostgreSQL's binaries run as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."

LISTENERS=${LISTENERS:-"0 100 500 1000"}
HEARTBEAT_LISTENERS=${HEARTBEAT_LISTENERS:-}
WRITE_EVERY=${WRITE_EVERY:-20ms}
WRITE_DURATION=${WRITE_DURATION:-30s}
CLOSED_DURATION=${CLOSED_DURATION:-10s}
TRIALS=${TRIALS:-200}
NOTIFY_CLIENTS=${NOTIFY_CLIENTS:-8}
LISTENER_NICE=${LISTENER_NICE:-10}
PROPAGATION_TIMEOUT=${PROPAGATION_TIMEOUT:-300}
CONNECTION_LOAD=${CONNECTION_LOAD:-1}
PG_PORT=${PG_PORT:-55432}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-1200}
SHARED_BUFFERS=${SHARED_BUFFERS:-128MB}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
RESULTS=${RESULTS:-${TMPDIR:-/tmp}/capacity.jsonl}

source bench/release.sh
PGROOT=$(mktemp -d "${TMPDIR:-/tmp}/sa-capacity-pg.XXXXXX")
PIDS=()
listeners_pid=
sampler=
cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  [ -z "$listeners_pid" ] || kill "$listeners_pid" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -f "$PGROOT/data/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGROOT/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PGROOT" "$WORK"
}
trap cleanup EXIT
# A signal ends the script (and so cleans up) once the command in progress returns.
trap 'exit 130' INT
trap 'exit 143' TERM
say() { printf '\n### %s\n' "$*" >&2; }
: >"$RESULTS"
emit() { tee -a "$RESULTS"; } # a JSON line to stdout and the results
PIN_A=(); PIN_B=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PIN_A=(taskset -c "${SERVER_CPU:-0}"); PIN_B=(taskset -c "${LOAD_CPU:-1}")
fi

# --- the cluster ----------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
while ! port_free "$PG_PORT"; do PG_PORT=$((PG_PORT + 1)); done
chown postgres: "$PGROOT"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGROOT/data" -U postgres -A trust -E UTF8 \
  --locale=C >"$PGROOT/initdb.log" 2>&1 || { cat "$PGROOT/initdb.log" >&2; exit 1; }
cat >>"$PGROOT/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT'
max_connections = $MAX_CONNECTIONS
shared_buffers = $SHARED_BUFFERS
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w start >/dev/null
PG_ADMIN_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/service_accounts
POSTMASTER=$(head -n 1 "$PGROOT/data/postmaster.pid")
psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE service_accounts" >/dev/null
psql -qAt "$PG_ADMIN_URL" -c "SELECT json_build_object('label', 'cluster', 'version', current_setting('server_version'), 'port', $PG_PORT, 'max_connections', current_setting('max_connections')::int, 'shared_buffers', current_setting('shared_buffers'), 'fsync', current_setting('fsync'), 'synchronous_commit', current_setting('synchronous_commit'), 'full_page_writes', current_setting('full_page_writes'), 'wal_sync_method', current_setting('wal_sync_method'), 'nproc', $(nproc))" | emit

# --- measuring helpers ----------------------------------------------------------------------
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The cluster's CPU ticks so far: the postmaster's own and its exited children's, plus the live
# children's.
pg_ticks() {
  local total pid
  total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$POSTMASTER/stat")
  for pid in $(pgrep -P "$POSTMASTER"); do total=$((total + $(ticks "$pid"))); done
  echo "$total"
}
pg_pss_kib() { # the cluster's processes' summed proportional set size
  local total=0 pid kib
  for pid in "$POSTMASTER" $(pgrep -P "$POSTMASTER"); do
    kib=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}
# conns LABEL: connections to the cluster per process (client port → pid from ss), by kind.
conns() {
  ss -tnpH state established "( dport = :$PG_PORT )" >"$WORK/ss.txt" || true
  psql -qAt -F '|' "$PG_ADMIN_URL" -c "SELECT client_port, coalesce(application_name, ''), coalesce(state, '') FROM pg_stat_activity WHERE backend_type = 'client backend' AND client_port IS NOT NULL" >"$WORK/psa.txt"
  python3 - "$1" "$WORK/ss.txt" "$WORK/psa.txt" "$PID_a" "$PID_b" "${PID_c:-0}" "${listeners_pid:-0}" <<'PY'
import json, re, sys
label, ss, psa, a, b, c, listeners = sys.argv[1:]
owner = {}
for line in open(ss):
    m = re.search(r"\S+:(\d+)\s+\S+:\d+\s+users:\(\(\"[^\"]*\",pid=(\d+)", line)
    if m:
        owner[m.group(1)] = m.group(2)
names = {a: "replica_a", b: "replica_b", c: "replica_c", listeners: "extra_listeners"}
out = {"label": "connections", "at": label, "total": 0}
for line in open(psa):
    port, app, state = line.rstrip("\n").split("|")
    out["total"] += 1
    who = names.get(owner.get(port, ""), "other")
    entry = out.setdefault(who, {"connections": 0, "listener": 0, "pool": 0, "pool_active": 0})
    entry["connections"] += 1
    if app == "service-accounts-listener":
        entry["listener"] += 1
    else:
        entry["pool"] += 1
        entry["pool_active"] += state not in ("idle", "")
for who in ("extra_listeners", "other"):
    if who in out:
        out[who] = out[who]["connections"]
print(json.dumps(out))
PY
}
# sample_conns LABEL FILE: conns every second into FILE until killed.
sample_conns() { while true; do conns "$1" >>"$2" 2>/dev/null || true; sleep 1; done; }
# most_conns FILE LABEL: the most connections each replica held over the samples.
most_conns() {
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = {"label": "connections", "at": sys.argv[2], "samples": len(rows)}
for who in ("replica_a", "replica_b", "replica_c"):
    seen = [r[who] for r in rows if who in r]
    if seen:
        out[who] = {k: max(s[k] for s in seen) for k in seen[0]}
out["total"] = max((r["total"] for r in rows), default=0)
print(json.dumps(out))
PY
}
queue_usage() { psql -qAt "$PG_URL" -c "SELECT pg_notification_queue_usage()"; }
# losses: how often replicas A and B have lost their subscription so far (a heartbeat that did
# not come back within 1 s counts), from their logs.
losses() { cat "$WORK/a.log" "$WORK/b.log" | grep -c 'change notifications lost' || true; }

# --- the replicas ---------------------------------------------------------------------------
start() { # start NAME PORT PIN… [-- FLAGS…]
  local name=$1 port=$2 flags=(); shift 2
  local pin=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do pin+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; flags=("$@"); }
  "${pin[@]}" "$BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" --database-url "$PG_URL" \
    --log-format json --admin-trust-dev-key --max-tokens-per-service-account 100000 "${flags[@]}" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  "$LOAD" ready --target "http://127.0.0.1:$port" || { tail -n 20 "$WORK/$name.log" >&2; exit 1; }
}
A=http://127.0.0.1:50302
B=http://127.0.0.1:50304
start a 50302 "${PIN_A[@]}"
start b 50304 "${PIN_B[@]}"
jwt=$("$BIN" admin-token --data-dir "$WORK/a" --org-id bench --user-id bench)
export ADMIN_JWT=$jwt
writer=$("$LOAD" seed --target "$A" --name writer)
closed_writer=$("$LOAD" seed --target "$A" --name closed-writer)
prop_account=$("$LOAD" seed --target "$A" --name propagation)
"$LOAD" seed --target "$A" --name hits --tokens 200 --out "$WORK/hits.txt" >/dev/null
sleep 5
say "connections at idle (default --db-max-connections 16)"
conns idle | emit

cat >"$WORK/notify.sql" <<'SQL'
SELECT pg_notify('service_accounts_changes', 'heartbeat:pgbench');
SQL

# measure LABEL N COMMAND…: runs a measurement printing one JSON line; labels it (or records
# the failure and goes on).
measure() {
  local label=$1 n=$2 line; shift 2
  if line=$("$@" 2>"$WORK/err.txt"); then
    echo "$line" | tail -n 1 | sed "s/^{/{\"label\":\"$label\",\"listeners\":$n,/" | emit
  else
    python3 -c "import json,sys; print(json.dumps({'label': sys.argv[1], 'listeners': int(sys.argv[2]), 'failed': True, 'error': open(sys.argv[3]).read().strip()[-300:]}))" \
      "$label" "$n" "$WORK/err.txt" | emit
  fi
}

notify_bench() { # pgbench's notifying commits per second
  "${PIN_B[@]}" pgbench -n -c "$NOTIFY_CLIENTS" -j 2 -T "${CLOSED_DURATION%s}" -f "$WORK/notify.sql" \
    "$PG_URL" >"$WORK/pgbench.txt" 2>&1 || { cat "$WORK/pgbench.txt" >&2; return 1; }
  python3 - "$WORK/pgbench.txt" "$NOTIFY_CLIENTS" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
tps = float(re.search(r"^tps = ([\d.]+)", text, re.M).group(1))
latency = float(re.search(r"latency average = ([\d.]+) ms", text).group(1))
print(json.dumps({"clients": int(sys.argv[2]), "tps": round(tps), "latency_avg_ms": latency}))
PY
}

# phase N [HEARTBEAT]: the measurements with N extra listeners (sending heartbeats if asked).
phase() {
  local n=$1 hb=${2:-} tag=listeners extra=() out
  [ -n "$hb" ] && { tag=listeners-heartbeats; extra=(--heartbeat-every 250ms); }
  local pss_before lost_before
  pss_before=$(pg_pss_kib)
  lost_before=$(losses)
  if [ "$n" -gt 0 ]; then
    say "$n extra listeners${hb:+, each sending heartbeats}"
    out=$WORK/listeners-$n$hb.out
    # Heartbeat senders are not niced: they must keep their pace, as replicas do.
    nice -n "$([ -n "$hb" ] && echo 0 || echo "$LISTENER_NICE")" "$LOAD" listeners --database-url "$PG_URL" --count "$n" "${extra[@]}" \
      >"$out" 2>"$WORK/listeners.err" &
    listeners_pid=$!
    local waited=0
    until [ -s "$out" ]; do
      if ! kill -0 "$listeners_pid" 2>/dev/null || [ $waited -ge 300 ]; then
        python3 -c "import json,sys; print(json.dumps({'label': sys.argv[1], 'listeners': int(sys.argv[2]), 'failed': True, 'error': open(sys.argv[3]).read().strip()[-300:]}))" \
          "$tag-start" "$n" "$WORK/listeners.err" | emit
        kill "$listeners_pid" 2>/dev/null || true; wait "$listeners_pid" 2>/dev/null || true
        listeners_pid=
        return 0
      fi
      sleep 1; waited=$((waited + 1))
    done
    sed "s/^{/{\"label\":\"$tag-up\",/" "$out" | head -n 1 | emit
    sleep 3
  else
    say "no extra listeners"
  fi
  conns "idle-$tag-$n" | emit
  local pss_after queue0 l0 p0 l1 p1
  pss_after=$(pg_pss_kib)
  queue0=$(queue_usage)
  l0=$( [ -n "$listeners_pid" ] && ticks "$listeners_pid" || echo 0 ); p0=$(pg_ticks)
  sample_conns "load-$tag-$n" "$WORK/conns-$tag-$n.jsonl" &
  sampler=$!
  measure "writes-$tag" "$n" "${PIN_B[@]}" "$LOAD" admin-writes --target "$A" \
    --service-account-id "$writer" --duration "$WRITE_DURATION" --every "$WRITE_EVERY"
  l1=$( [ -n "$listeners_pid" ] && ticks "$listeners_pid" || echo 0 ); p1=$(pg_ticks)
  local queue1
  queue1=$(queue_usage)
  measure "propagation-$tag" "$n" timeout "$PROPAGATION_TIMEOUT" "${PIN_B[@]}" "$LOAD" propagation --writer "$A" --reader "$B" \
    --service-account-id "$prop_account" --trials "$TRIALS"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=
  most_conns "$WORK/conns-$tag-$n.jsonl" "load-$tag-$n" | emit
  measure "closed-writes-$tag" "$n" "${PIN_B[@]}" "$LOAD" admin-writes --target "$A" \
    --service-account-id "$closed_writer" --duration "$CLOSED_DURATION" --every 0s
  measure "notify-commits-$tag" "$n" notify_bench
  python3 -c "import json,os,sys
hz=os.sysconf('SC_CLK_TCK'); secs=float(sys.argv[7])
print(json.dumps({'label': sys.argv[1], 'listeners': int(sys.argv[2]),
  'pg_pss_mib_before': round(int(sys.argv[3])/1024, 1), 'pg_pss_mib_after': round(int(sys.argv[4])/1024, 1),
  'pg_cpu_cores_during_writes': round((int(sys.argv[6])-int(sys.argv[5]))/hz/secs, 2),
  'listeners_cpu_cores_during_writes': round((int(sys.argv[9])-int(sys.argv[8]))/hz/secs, 2),
  'queue_usage_before': float(sys.argv[10]), 'queue_usage_after_writes': float(sys.argv[11]),
  'subscriptions_lost': int(sys.argv[12]),
  'load_average': open('/proc/loadavg').read().split()[:3]}))" \
    "host-$tag" "$n" "$pss_before" "$pss_after" "$p0" "$p1" "${WRITE_DURATION%s}" "$l0" "$l1" \
    "$queue0" "$queue1" "$(($(losses) - lost_before))" | emit
  if [ -n "$listeners_pid" ]; then
    kill -TERM "$listeners_pid" 2>/dev/null || true
    wait "$listeners_pid" 2>/dev/null || true
    listeners_pid=
    tail -n 1 "$out" | sed "s/^{/{\"label\":\"$tag-received\",/" | emit
  fi
}

for n in $LISTENERS; do phase "$n"; done
for n in $HEARTBEAT_LISTENERS; do phase "$n" hb; done

if [ "$CONNECTION_LOAD" = 1 ]; then
  say "connections under load: replica C (cache off), 64 Introspect streams and admin writes"
  start c 50306 "${PIN_A[@]}" -- --introspection-cache-capacity 0
  ADMIN_JWT=$("$BIN" admin-token --data-dir "$WORK/c" --org-id bench --user-id bench)
  c_writer=$("$LOAD" seed --target http://127.0.0.1:50306 --name c-writer)
  sample_conns load-c "$WORK/conns-c.jsonl" &
  sampler=$!
  "${PIN_B[@]}" "$LOAD" load --target http://127.0.0.1:50306 --rpc introspect --tokens "$WORK/hits.txt" \
    --concurrency 64 --connections 4 --duration 8s --warmup 1s --label c-misses >"$WORK/c-load.json" &
  c_load=$!
  "${PIN_B[@]}" "$LOAD" admin-writes --target http://127.0.0.1:50306 --service-account-id "$c_writer" \
    --duration 8s --every 0s >"$WORK/c-writes.json" &
  c_writes=$!
  wait "$c_load" "$c_writes" || true
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=
  most_conns "$WORK/conns-c.jsonl" "introspection-misses-and-writes" | emit
fi

say "summary"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(label, n):
    return next((r for r in rows if r.get("label") == label and r.get("listeners") == n), None)
def ms(r, key):
    return "failed" if r is None or r.get("failed") else f"{r[key] / 1000:.1f}"
for tag in ("listeners", "listeners-heartbeats"):
    counts = sorted({r["listeners"] for r in rows if r.get("label") == f"host-{tag}"})
    if not counts:
        continue
    print(f"\n{tag}: admin writes at a fixed pace, propagation, closed loop, notifying commits")
    print(f"{'extra':>6} {'write p50':>9} {'p99':>7} {'max':>7} {'prop p50':>8} {'p99':>7} {'max':>7}"
          f" {'closed/s':>8} {'notify tps':>10} {'pg cores':>8} {'pss MiB':>8} {'lost':>4} {'load':>5}")
    for n in counts:
        w, p = get(f"writes-{tag}", n), get(f"propagation-{tag}", n)
        c, t, h = get(f"closed-writes-{tag}", n), get(f"notify-commits-{tag}", n), get(f"host-{tag}", n)
        print(f"{n:>6} {ms(w, 'p50_us'):>9} {ms(w, 'p99_us'):>7} {ms(w, 'max_us'):>7}"
              f" {ms(p, 'p50_us'):>8} {ms(p, 'p99_us'):>7} {ms(p, 'max_us'):>7}"
              f" {('failed' if not c or c.get('failed') else c['per_s']):>8}"
              f" {('failed' if not t or t.get('failed') else t['tps']):>10}"
              f" {h['pg_cpu_cores_during_writes']:>8} {h['pg_pss_mib_after']:>8}"
              f" {h['subscriptions_lost']:>4} {h['load_average'][0]:>5}")
    for r in rows:
        if r.get("label") == f"{tag}-received" and r.get("heartbeats_sent"):
            print(f"{r['listeners']} listeners sent {r['heartbeats_sent'] / r['seconds']:.0f} heartbeats/s"
                  f" (a replica's pace would be {4 * r['listeners']}/s)")
print("\n(times in ms)")
for r in rows:
    if r.get("label") == "connections" and r["at"] in ("idle", "load-listeners-0", "introspection-misses-and-writes"):
        per = {k: v for k, v in r.items() if k.startswith("replica_")}
        print(f"connections {r['at']}: " + "; ".join(f"{k}: {v['connections']} ({v['pool']} pool, {v['listener']} listener)" for k, v in per.items()))
PY
