#!/usr/bin/env bash
# Memory per cached introspection entry: RSS of a release server before and after introspecting
# TOKENS distinct tokens (default 100,000) spread over ACCOUNTS accounts (default 1,000), each
# token once, with a cache large enough to keep them all. Accounts are created through the admin
# API; tokens are copied straight into a fresh PostgreSQL database.
#
# Tunables: TOKENS (100000), ACCOUNTS (1000), RUNS (2: the figure moves by some tens of bytes),
# SETTLE (15s, see below).
# Needs PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${TOKENS:-100000}
ACCOUNTS=${ACCOUNTS:-1000}
RUNS=${RUNS:-2}
SETTLE=${SETTLE:-15s}
PG_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

source bench/release.sh
DB="bench_memory_$$"
DB_URL="${PG_URL%/*}/$DB"
trap 'kill $(jobs -p) 2>/dev/null || true; psql -q "$PG_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
say() { printf '%s\n' "$*" >&2; }

serve() {
  "$BIN" serve --listen 127.0.0.1:50190 --data-dir "$WORK" --database-url "$DB_URL" \
    --admin-trust-dev-key "$@" >>"$WORK/server.log" 2>&1 &
  server=$!
  "$LOAD" ready --target http://127.0.0.1:50190 >/dev/null
}
stop() {
  kill -INT "$server"
  wait "$server" || true
}

psql -q "$PG_URL" -c "CREATE DATABASE $DB" >/dev/null
serve
jwt=$("$BIN" admin-token --data-dir "$WORK" --org-id bench --user-id bench)
accounts=()
for i in $(seq "$ACCOUNTS"); do
  accounts+=("$(ADMIN_JWT=$jwt "$LOAD" seed --target http://127.0.0.1:50190 --name "memory $i")")
done
stop
ids=$(IFS=,; echo "${accounts[*]}")
"$LOAD" gen-tokens --count "$TOKENS" --service-account-id "$ids" --org-id bench \
  --csv "$WORK/tokens.csv" --plaintexts "$WORK/tokens.txt"
psql -q "$DB_URL" -c "\copy tokens (id, service_account_id, org_id, display_name, token_hash, scopes, hint, created_at, created_by) FROM '$WORK/tokens.csv' WITH (FORMAT csv)" -c "ANALYZE"
say "$TOKENS tokens over $ACCOUNTS accounts"
head -n 100 "$WORK/tokens.txt" >"$WORK/warm.txt"

for run in $(seq "$RUNS"); do
  serve --introspection-cache-capacity $((TOKENS * 2))
  # Both readings are taken after SETTLE of steady hits: the allocator returns freed pages to the
  # system only some seconds after they were freed (jemalloc's decay, 10 s), and the fill frees
  # a lot (storage rows, request buffers) that a serving process would long have returned.
  "$LOAD" load --target http://127.0.0.1:50190 --rpc introspect --tokens "$WORK/warm.txt" \
    --duration "$SETTLE" --warmup 0s --concurrency 4 --connections 1 >/dev/null
  before=$("$LOAD" rss --pid "$server")
  "$LOAD" load --target http://127.0.0.1:50190 --rpc introspect --tokens "$WORK/tokens.txt" \
    --requests "$TOKENS" --concurrency 16 --connections 2 >/dev/null
  "$LOAD" load --target http://127.0.0.1:50190 --rpc introspect --tokens "$WORK/warm.txt" \
    --duration "$SETTLE" --warmup 0s --concurrency 4 --connections 1 >/dev/null
  after=$("$LOAD" rss --pid "$server")
  stop
  per=$(( (after - before) * 1024 / TOKENS ))
  echo "{\"label\":\"memory\",\"run\":$run,\"tokens\":$TOKENS,\"accounts\":$ACCOUNTS,\"rss_before_kib\":$before,\"rss_after_kib\":$after,\"bytes_per_entry\":$per}"
done
