#!/usr/bin/env bash
# Server instructions per request, counted by valgrind's callgrind: a measure that stays steady
# on a noisy shared machine where throughput swings by a third (docs/benchmarks.md).
#
# For each kind of request, the release server (SQLite, one seeded token) runs under callgrind
# twice, answering N1 and then N2 requests of that kind sent one at a time after a warm-up; the
# difference of the two totals divided by N2 - N1 cancels start-up, seeding and shutdown.
#
# Kinds: introspect (an Introspect cache hit), check (Envoy's ext_authz Check, allowed, from the
# cache), forward-auth (GET /v1/forward-auth on the HTTP listener, allowed, from the cache, over
# one kept-alive connection), health (grpc.health.v1.Health/Check, the floor).
# Tunables: N1 (200), N2 (1200), KINDS ("introspect check forward-auth health").
# Needs valgrind (Debian's package) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-200}
N2=${N2:-1200}
KINDS=${KINDS:-"introspect check forward-auth health"}

cargo build --release --locked -q -p service-accounts-api -p service-accounts-loadgen
BIN=$PWD/target/release/service-accounts
LOAD=$PWD/target/release/loadgen
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# instructions KIND N: the server's total instructions for a run answering N requests of KIND.
instructions() {
  local kind=$1 n=$2 dir="$WORK/$1-$2" port=$((50200 + RANDOM % 500))
  mkdir -p "$dir"
  local http_port=$((port + 500))
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$BIN" serve --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port" \
    --data-dir "$dir" >"$dir/server.log" 2>&1 &
  local pid=$!
  "$LOAD" ready --target "http://127.0.0.1:$port" >/dev/null
  local jwt
  jwt=$("$BIN" admin-token --data-dir "$dir" --org-id bench --user-id bench)
  ADMIN_JWT=$jwt "$LOAD" seed --target "http://127.0.0.1:$port" --name bench --tokens 1 \
    --out "$dir/tokens.txt" >/dev/null
  if [ "$kind" = forward-auth ]; then
    forward_auth "$http_port" "$(cat "$dir/tokens.txt")" 20 "$dir/warm.curl"   # warm: cached
    forward_auth "$http_port" "$(cat "$dir/tokens.txt")" "$n" "$dir/run.curl"
  else
    local flags=(--target "http://127.0.0.1:$port" --rpc "$kind" --tokens "$dir/tokens.txt"
      --concurrency 1 --connections 1)
    "$LOAD" load "${flags[@]}" --requests 20 >/dev/null   # warm: the token is cached
    "$LOAD" load "${flags[@]}" --requests "$n" >/dev/null
  fi
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$dir/callgrind.out"
}

# forward_auth PORT TOKEN N CONFIG: N forward-auth requests from one curl, one connection.
forward_auth() {
  local port=$1 token=$2 n=$3 config=$4
  {
    echo "header = \"Authorization: Bearer $token\""
    for _ in $(seq "$n"); do
      echo "url = \"http://127.0.0.1:$port/v1/forward-auth\""
      echo "output = \"/dev/null\""
    done
  } >"$config"
  curl --silent --fail --config "$config"
}

for kind in $KINDS; do
  small=$(instructions "$kind" "$N1")
  large=$(instructions "$kind" "$N2")
  per=$(( (large - small) / (N2 - N1) ))
  echo "{\"label\":\"instructions\",\"kind\":\"$kind\",\"n1\":$N1,\"n2\":$N2,\"instructions_n1\":$small,\"instructions_n2\":$large,\"per_request\":$per}"
done
