#!/usr/bin/env bash
# How long admin writes wait while the last-used times of many tokens are written.
#
# For each backend: COUNT tokens (default 100,000) are loaded straight into a fresh database; a
# release server with a long --last-used-flush-interval introspects each of them once, so that
# COUNT uses wait in memory for the next flush; then an admin renames an account every 10 ms
# (`loadgen admin-writes`, another account) across that flush. The database is read before and after to show that
# the flush of all COUNT tokens happened while the admin was writing; the server's log gives the
# flush's window, and `during_flush` the admin writes that overlapped it (the target is about
# those; `admin_writes` covers the whole run, stalls unrelated to the flush included).
#
# Tunables: COUNT (100000), INTERVAL (flush interval, 60s), BACKENDS ("sqlite postgres").
# Needs PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# psql, and python3 (its sqlite3 module loads the SQLite database).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-100000}
INTERVAL=${INTERVAL:-60}
BACKENDS=${BACKENDS:-"sqlite postgres"}
PG_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

source bench/release.sh
PG_DB="bench_flush_$$"
trap 'status=$?; [ $status -eq 0 ] || tail -n 5 "$WORK"/*/server.log >&2 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

say() { printf '%s\n' "$*" >&2; }

# serve BACKEND PORT [FLAGS...]: starts a server in the background; sets $server.
serve() {
  local backend=$1 port=$2
  shift 2
  local db=()
  [ "$backend" = postgres ] && db=(--database-url "${PG_URL%/*}/$PG_DB" --admin-trust-dev-key)
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/$backend" "${db[@]}" "$@" \
    >>"$WORK/$backend/server.log" 2>&1 &
  server=$!
  "$LOAD" ready --target "http://127.0.0.1:$port" >/dev/null
}

stop() {
  kill -INT "$server"
  wait "$server" || true
}

# used BACKEND: how many tokens have a recorded last use.
used() {
  local sql="SELECT count(*) FROM tokens WHERE last_used_at IS NOT NULL"
  if [ "$1" = postgres ]; then
    psql -qtA "${PG_URL%/*}/$PG_DB" -c "$sql"
  else
    python3 -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])" \
      "$(ls "$WORK/sqlite"/*.db)" "$sql"
  fi
}

# load BACKEND CSV: copies generated tokens into the stopped server's database.
load_tokens() {
  local backend=$1 csv=$2
  local columns="id, service_account_id, org_id, display_name, token_hash, scopes, hint, created_at, created_by"
  if [ "$backend" = postgres ]; then
    psql -q "${PG_URL%/*}/$PG_DB" -c "\copy tokens ($columns) FROM '$csv' WITH (FORMAT csv)"
  else
    python3 - "$(ls "$WORK/sqlite"/*.db)" "$csv" "$columns" <<'PY'
import csv, sqlite3, sys
path, source, columns = sys.argv[1:]
def row(r):
    r[4] = bytes.fromhex(r[4][2:])              # \x<hex>: PostgreSQL's bytea text form
    r[7] = "2026-01-01T00:00:00+00:00"          # the text form the server writes in SQLite
    return r
with sqlite3.connect(path) as db, open(source, newline="") as f:
    db.executemany(f"INSERT INTO tokens ({columns}) VALUES ({', '.join('?' * 9)})",
                   (row(r) for r in csv.reader(f)))
PY
  fi
}

for backend in $BACKENDS; do
  mkdir -p "$WORK/$backend"
  [ "$backend" = postgres ] && psql -q "$PG_URL" -c "CREATE DATABASE $PG_DB" >/dev/null
  port=$((51300 + RANDOM % 500))
  serve "$backend" "$port"
  jwt=$("$BIN" admin-token --data-dir "$WORK/$backend" --org-id bench --user-id bench)
  account=$(ADMIN_JWT=$jwt "$LOAD" seed --target "http://127.0.0.1:$port" --name "flush bench")
  # The admin renames another account: renaming the one holding every cached token would time
  # the invalidation of its COUNT cache entries, not the wait for the flush.
  writer=$(ADMIN_JWT=$jwt "$LOAD" seed --target "http://127.0.0.1:$port" --name "flush writer")
  stop
  "$LOAD" gen-tokens --count "$COUNT" --service-account-id "$account" --org-id bench \
    --csv "$WORK/$backend/tokens.csv" --plaintexts "$WORK/$backend/tokens.txt"
  load_tokens "$backend" "$WORK/$backend/tokens.csv"
  say "$backend: $COUNT tokens loaded"

  # The first flush runs at start, the next INTERVAL seconds later: the uses go in between. The
  # server logs each flush's end and duration (debug), which gives the flush's window.
  RUST_LOG=info,service_accounts_api::server::background=debug \
    serve "$backend" "$port" --last-used-flush-interval "${INTERVAL}s" --log-format json
  started=$SECONDS
  "$LOAD" load --target "http://127.0.0.1:$port" --rpc introspect \
    --tokens "$WORK/$backend/tokens.txt" --requests "$COUNT" --concurrency 16 --connections 2 \
    --label "$backend uses" >/dev/null
  before=$(used "$backend")
  left=$((INTERVAL - (SECONDS - started)))
  [ "$left" -gt 5 ] || { say "the uses took longer than INTERVAL: raise INTERVAL"; exit 1; }
  say "$backend: $COUNT tokens used in $((SECONDS - started)) s; the flush is due in ${left} s"
  writes=$(ADMIN_JWT=$jwt "$LOAD" admin-writes --target "http://127.0.0.1:$port" \
    --service-account-id "$writer" --duration "$((left + 15))s" --every 10ms \
    --log "$WORK/$backend/writes.log")
  after=$(used "$backend")
  stop
  # The admin writes that overlapped the big flush, and the worst of them.
  during=$(python3 - "$WORK/$backend/server.log" "$WORK/$backend/writes.log" <<'PY'
import datetime, json, sys
flushes = []
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    fields = entry.get("fields", {})
    if fields.get("message") == "last-used times flushed" and "took_ms" in fields:
        end = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        end_us = int(end.timestamp() * 1e6)
        flushes.append((fields["written"], end_us - fields["took_ms"] * 1000, end_us))
written, start, end = max(flushes)
writes = [tuple(map(int, line.split())) for line in open(sys.argv[2])]
overlapping = [took for at, took in writes if at <= end and at + took >= start]
print(json.dumps({"flush_written": written, "flush_ms": (end - start) // 1000,
                  "writes": len(overlapping), "max_us": max(overlapping, default=0)}))
PY
)
  echo "{\"label\":\"flush\",\"backend\":\"$backend\",\"tokens\":$COUNT,\"used_before\":$before,\"used_after\":$after,\"admin_writes\":$writes,\"during_flush\":$during}"
done
