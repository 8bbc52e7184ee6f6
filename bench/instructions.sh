#!/usr/bin/env bash
# Server instructions per request, counted by valgrind's callgrind: a measure that stays steady
# on a noisy shared machine where throughput swings by a third (docs/benchmarks.md).
#
# For each kind of request, the release server (SQLite, one seeded token) runs under callgrind
# with address-space randomisation off; after a warm-up, the counters are zeroed, N requests of
# that kind are sent one at a time over one connection, and the counters are dumped: the total of
# every server thread over those N requests, divided by N. The periodic work (storage readiness
# pings, last-used flushes) is set an hour apart: it scales with how long a run takes, not with
# its requests. Each count is the median of REPEAT such measurements, each on a fresh server.
#
# Kinds: health (grpc.health.v1.Health/Check, the floor), introspect (an Introspect cache hit
# with the token only), introspect-checks (a hit with org, app, a required scope and a client
# address, as a calling service sends it), malformed (an Introspect of a string that is no
# token), check (Envoy's ext_authz Check, allowed, from the cache), forward-auth (GET
# /v1/forward-auth on the HTTP listener, allowed, from the cache, over one kept-alive connection),
# rfc7662 (POST /oauth2/introspect with the token, an active answer from the cache, one
# kept-alive connection, no client file).
#
# Prints one JSON line per kind, then each kind's ratio to health. With GUARD=<file>, fails when
# a ratio exceeds the one in the file (lines `kind ratio`) by more than TOLERANCE percent (3):
# counts repeat to about 0.2%, so a larger rise is a change in the code, not noise.
#
# Tunables: N (1000), REPEAT (1), KINDS ("health introspect introspect-checks malformed check
# forward-auth"), GUARD, TOLERANCE. Needs valgrind (Debian's package; callgrind_control comes
# with it), setarch (util-linux) and curl.
set -euo pipefail
shopt -s inherit_errexit   # a failed run inside $(...) stops the script, not a garbage count
cd "$(dirname "$0")/.."

N=${N:-1000}
REPEAT=${REPEAT:-1}
KINDS=${KINDS:-"health introspect introspect-checks malformed check forward-auth rfc7662"}
TOLERANCE=${TOLERANCE:-3}

source bench/release.sh
# Servers start inside $(...) subshells, out of reach of `jobs`: their pids are kept in a file.
trap 'kill $(cat "$WORK/pids" 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# instructions KIND: the server's instructions per request over N requests of KIND.
instructions() {
  local kind=$1 dir port http_port
  dir=$(mktemp -d -p "$WORK")
  port=$(free_port)
  http_port=$(free_port)
  # jemalloc returns freed memory on a timer: off, so that its work follows the requests only.
  # Without address-space randomisation, allocations line up the same way in every run.
  _RJEM_MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 setarch "$(uname -m)" -R \
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
    "$BIN" serve --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port" \
    --data-dir "$dir" --readiness-interval 1h --last-used-flush-interval 1h \
    >"$dir/server.log" 2>&1 &
  local pid=$!
  echo "$pid" >>"$WORK/pids"
  "$LOAD" ready --target "http://127.0.0.1:$port" >/dev/null
  local jwt
  jwt=$("$BIN" admin-token --data-dir "$dir" --org-id bench --user-id bench)
  ADMIN_JWT=$jwt "$LOAD" seed --target "http://127.0.0.1:$port" --name bench --tokens 1 \
    --out "$dir/tokens.txt" >/dev/null
  local flags=(--target "http://127.0.0.1:$port" --tokens "$dir/tokens.txt"
    --concurrency 1 --connections 1)
  case $kind in
    health) flags+=(--rpc health) ;;
    introspect) flags+=(--rpc introspect) ;;
    introspect-checks)
      flags+=(--rpc introspect --org-id bench --app-id checkout-ios --scopes mcp:read
        --client-ip 10.1.2.3) ;;
    malformed) echo "emb_sa_not-a-token" >"$dir/tokens.txt"; flags+=(--rpc introspect) ;;
    check) flags+=(--rpc check) ;;
  esac
  local token
  token=$(cat "$dir/tokens.txt")
  # Warm-up (the token is cached), then count only the measured requests.
  if [ "$kind" = forward-auth ]; then
    forward_auth "$http_port" "$token" 20 "$dir/warm.curl"
    callgrind_control --zero "$pid" >/dev/null 2>&1
    forward_auth "$http_port" "$token" "$N" "$dir/run.curl"
  elif [ "$kind" = rfc7662 ]; then
    rfc7662 "$http_port" "$token" 20 "$dir/warm.curl"
    callgrind_control --zero "$pid" >/dev/null 2>&1
    rfc7662 "$http_port" "$token" "$N" "$dir/run.curl"
  else
    "$LOAD" load "${flags[@]}" --requests 20 >/dev/null
    callgrind_control --zero "$pid" >/dev/null 2>&1
    "$LOAD" load "${flags[@]}" --requests "$N" >/dev/null
  fi
  callgrind_control --dump "$pid" >/dev/null 2>&1
  kill -INT "$pid"
  wait "$pid" || true
  local dump="$dir/callgrind.out.1"
  grep -q '^totals:\|^summary:' "$dump" 2>/dev/null || { cat "$dir/server.log" >&2; return 1; }
  awk -v n="$N" '/^(summary|totals):/ { printf "%d\n", $2 / n; exit }' "$dump"
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

# rfc7662 PORT TOKEN N CONFIG: N token introspections (RFC 7662) from one curl, one connection.
rfc7662() {
  local port=$1 token=$2 n=$3 config=$4
  {
    for i in $(seq "$n"); do
      [ "$i" -gt 1 ] && echo "next"
      echo "url = \"http://127.0.0.1:$port/oauth2/introspect\""
      echo "data = \"token=$token\""
      echo "output = \"/dev/null\""
    done
  } >"$config"
  curl --silent --fail --config "$config"
}

results="$WORK/results"
for kind in $KINDS; do
  runs=()
  for _ in $(seq "$REPEAT"); do
    runs+=("$(instructions "$kind")")
    [ "${runs[-1]}" -gt 0 ] || { echo "$kind: a run counted no work" >&2; exit 1; }
  done
  per=$(printf '%s\n' "${runs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "$kind $per" >>"$results"
  echo "{\"label\":\"instructions\",\"kind\":\"$kind\",\"n\":$N,\"runs\":[$(IFS=,; echo "${runs[*]}")],\"per_request\":$per}"
done

python3 - "$results" "${GUARD:-}" "$TOLERANCE" <<'PY'
import sys
counts = dict((k, int(v)) for k, v in (line.split() for line in open(sys.argv[1])))
guard, tolerance = sys.argv[2], float(sys.argv[3])
if "health" not in counts:
    sys.exit("the ratios need the health kind" if guard else 0)
ratios = {k: v / counts["health"] for k, v in counts.items() if k != "health"}
for kind, ratio in ratios.items():
    print(f"{kind}: {counts[kind]:,} instructions per request, {ratio:.3f}x health ({counts['health']:,})")
if guard:
    failed = False
    for line in open(guard):
        if not line.strip() or line.startswith("#"):
            continue
        kind, limit = line.split()
        if kind in ratios and ratios[kind] > float(limit) * (1 + tolerance / 100):
            print(f"REGRESSION: {kind} is {ratios[kind]:.3f}x health, over {limit} + {tolerance:g}%")
            failed = True
    sys.exit(1 if failed else 0)
PY
