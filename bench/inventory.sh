#!/usr/bin/env bash
# Inventory reads of one big org (docs/benchmarks.md, "Token inventory and credential report";
# SPEC §22): filtered and ordered `ListTokens` pages over every token of the org, filtered
# `ListAuditEvents` pages, and the whole org's `ExportCredentialReport` with the server's RSS
# sampled while it streams. Then the query plans: PostgreSQL's real ones (auto_explain, with
# ANALYZE and BUFFERS) and SQLite's EXPLAIN QUERY PLAN of the same statements.
#
# The dataset, written with SQL straight into the database of a migrated release server
# (generate_series, random() with a fixed seed; times relative to the start of the run):
#   org `bench`: ACCOUNTS (1,000) accounts, TOKENS (100,000) tokens spread evenly over them;
#   org `bench-other`: OTHER_ACCOUNTS (100) accounts, OTHER_TOKENS (10,000) tokens, the same way.
#   Each token: created at a uniform time over the past 2 years; never used (last_used_at NULL)
#   with probability 0.20, else last used at a uniform time between its creation and now (or its
#   revocation), from an app and an address; scopes `mcp:tools:call`, plus `mcp:read` with
#   probability 0.5 and `mcp:write` with 0.3 (stored sorted, space-separated); never expiring
#   with probability 0.10, else expiring at a uniform time over the next 365 days; revoked with
#   probability 0.05 (revoke_reason `admin`, revoked_by, revoked_at between creation and now);
#   created by one of four admins. Ids are UUIDv7 of the creation time, as the server makes them.
#   Audit events: `service_account.create` per account, `token.create` per token (at its
#   creation, by its creator) and `token.revoke` per revoked token: about 106,000 for `bench`.
#   Then VACUUM ANALYZE (so that no autovacuum of the fresh rows runs during the timings).
#
# Per case (bench/loadgen/src/inventory.rs): CALLS (300) first pages of PAGE_SIZE (100), one call
# at a time, and CALLS pages after the first following next_page_token; HdrHistogram p50/p99/max
# as JSON lines. Then REPORT_RUNS (3) credential reports of `bench`, VmRSS of the server sampled
# every 10 ms. On each backend of BACKENDS ("postgres sqlite"); the server on CPU 0 and the load
# generator on CPU 1 (SERVER_CPU, LOAD_CPU; PIN=0: not pinned), PostgreSQL not pinned.
#
# Plans (PLANS=1): the PostgreSQL server is restarted on the database with auto_explain loaded
# in every session (ALTER DATABASE … SET session_preload_libraries, log_min_duration 0, analyze,
# buffers), PLAN_CALLS (12) calls of each case and series are made (enough for PostgreSQL's
# switch from custom to generic plans of prepared statements, after 5 executions), and the plan
# of the last execution of each statement (of the middle one for the report's 200) is read back
# from PostgreSQL's log (PG_LOG, default the newest /var/log/postgresql/postgresql-*.log; it must
# be readable). The same statements,
# placeholders made SQLite's, go through EXPLAIN QUERY PLAN on a SQLite database holding the
# same rows (copied with the `sqlite3` shell), through the SQLite library the server links
# (`loadgen sqlite-plans`): as the server leaves the file (it never runs ANALYZE), and after
# ANALYZE. Everything is written to PLANS_OUT (default $TMPDIR/inventory-plans.txt).
# The SQLite timings run without statistics; SQLITE_ANALYZE=1 runs ANALYZE first through the
# server's SQLite (which writes sqlite_stat4 too), SQLITE_ANALYZE=shell through the `sqlite3`
# shell (Debian's is built without STAT4: sqlite_stat1 only).
#
# KEEP_DB=1 keeps the PostgreSQL database (auto_explain settings removed) to look at afterwards.
#
# Needs PostgreSQL at BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# as a superuser, psql, python3 and sqlite3 (Debian's `sqlite3`).
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${TOKENS:-100000}
ACCOUNTS=${ACCOUNTS:-1000}
OTHER_TOKENS=${OTHER_TOKENS:-10000}
OTHER_ACCOUNTS=${OTHER_ACCOUNTS:-100}
CALLS=${CALLS:-300}
PAGE_SIZE=${PAGE_SIZE:-100}
REPORT_RUNS=${REPORT_RUNS:-3}
BACKENDS=${BACKENDS:-"postgres sqlite"}
PLANS=${PLANS:-1}
PLAN_CALLS=${PLAN_CALLS:-12}
SQLITE_ANALYZE=${SQLITE_ANALYZE:-0}
PLANS_OUT=${PLANS_OUT:-${TMPDIR:-/tmp}/inventory-plans.txt}
PG_ADMIN_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_LOG=${PG_LOG:-$(ls -t /var/log/postgresql/postgresql-*.log 2>/dev/null | head -n1 || true)}
BENCH_DB=sa_inventory_$$
PG_URL="${PG_ADMIN_URL%/*}/$BENCH_DB"

source bench/release.sh
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP_DB:-0}" = 1 ]; then
    psql -q "$PG_ADMIN_URL" -c "ALTER DATABASE $BENCH_DB RESET ALL" >/dev/null 2>&1 || true
    echo "kept the PostgreSQL database $BENCH_DB" >&2
  else
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '\n### %s\n' "$*" >&2; }
PIN_A=(); PIN_B=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PIN_A=(taskset -c "${SERVER_CPU:-0}"); PIN_B=(taskset -c "${LOAD_CPU:-1}")
fi

NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EXPIRE_BEFORE=$(date -u -d "$NOW + 30 days" +%Y-%m-%dT%H:%M:%SZ)
AUDIT_SINCE=$(date -u -d "$NOW - 7 days" +%Y-%m-%dT%H:%M:%SZ)
PORT=$((52000 + RANDOM % 1000))
TARGET=http://127.0.0.1:$PORT

# serve BACKEND: a release server on the backend's database, pinned; sets $server.
serve() {
  local backend=$1 db=()
  [ "$backend" = postgres ] && db=(--database-url "$PG_URL")
  mkdir -p "$WORK/$backend"
  "${PIN_A[@]}" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$backend" "${db[@]}" \
    --admin-trust-dev-key >>"$WORK/$backend.log" 2>&1 &
  server=$!
  "$LOAD" ready --target "$TARGET"
}
stop() {
  kill -INT "$server"
  wait "$server" || true
  server=
}
# inventory BACKEND ARGS…: the load generator against the running server, its JWTs minted from
# the backend's data dir.
inventory() {
  local backend=$1
  shift
  ADMIN_JWT=$("$BIN" admin-token --data-dir "$WORK/$backend" --org-id bench --user-id bench) \
  OTHER_ADMIN_JWT=$("$BIN" admin-token --data-dir "$WORK/$backend" --org-id bench-other --user-id bench) \
    "${PIN_B[@]}" "$LOAD" inventory --target "$TARGET" --backend "$backend" \
    --page-size "$PAGE_SIZE" --expire-before "$EXPIRE_BEFORE" --audit-since "$AUDIT_SINCE" "$@"
}

# seed ORG ACCOUNTS TOKENS SEED: the org's accounts, tokens and audit trail (see the top).
seed() {
  psql -q -v ON_ERROR_STOP=1 -v org="$1" -v accounts="$2" -v tokens="$3" -v seed="$4" \
    -v now="$NOW" "$PG_URL" <<'SQL'
SELECT setseed(:seed) \gset
-- A UUIDv7 of time t, its random bits from md5(salt).
CREATE FUNCTION pg_temp.uuid7(t timestamptz, salt text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' ||
         substr(h, 17, 4) || '-' || substr(h, 21, 12)
  FROM (SELECT lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7' ||
               substr(m, 1, 3) || substr('89ab', get_byte(decode(m, 'hex'), 15) % 4 + 1, 1) ||
               substr(m, 4, 15) AS h
        FROM (SELECT md5(salt) AS m) r) x
$$;
CREATE TEMP TABLE accounts AS
  SELECT n, at, pg_temp.uuid7(at, :'org' || '/account/' || n) AS id
  FROM (SELECT n, :'now'::timestamptz - interval '731 days' - n * interval '1 minute' AS at
        FROM generate_series(1, :accounts) n) a;
INSERT INTO service_accounts (id, org_id, display_name, display_name_key, description, all_apps,
                              created_at, updated_at, created_by, revision, state)
  SELECT id, :'org', 'service ' || n, 'service ' || n, 'inventory benchmark', true, at, at,
         'alice@example.com', 1, 'active'
  FROM accounts;
CREATE TEMP TABLE drawn AS
  SELECT i, created,
         CASE WHEN r_revoked < 0.05
              THEN date_trunc('second', created + r_revoked_at * (:'now'::timestamptz - created))
         END AS revoked,
         r_unused, r_used, r_read, r_write, r_forever, r_expire
  FROM (SELECT i,
               date_trunc('second', :'now'::timestamptz - random() * interval '730 days') AS created,
               random() AS r_revoked, random() AS r_revoked_at, random() AS r_unused,
               random() AS r_used, random() AS r_read, random() AS r_write,
               random() AS r_forever, random() AS r_expire
        FROM generate_series(1, :tokens) i) d;
INSERT INTO tokens (id, service_account_id, org_id, display_name, token_hash, scopes, hint,
                    created_at, created_by, expire_at, revoked_at, revoked_by, last_used_at,
                    revoke_reason, allowed_cidrs, last_used_app_id, last_used_client_ip)
  SELECT pg_temp.uuid7(created, :'org' || '/token/' || i), a.id, :'org', 'token ' || i,
         sha256(convert_to(:'org' || '/token/' || i, 'UTF8')),
         concat_ws(' ', CASE WHEN r_read < 0.5 THEN 'mcp:read' END, 'mcp:tools:call',
                   CASE WHEN r_write < 0.3 THEN 'mcp:write' END),
         'emb_sa_…' || substr(md5(i::text), 1, 6), created,
         (ARRAY['alice@example.com', 'bob@example.com', 'carol@example.com',
                'dave@example.com'])[1 + i % 4],
         CASE WHEN r_forever >= 0.1
              THEN date_trunc('second', :'now'::timestamptz + r_expire * interval '365 days') END,
         revoked, CASE WHEN revoked IS NOT NULL THEN 'alice@example.com' END,
         CASE WHEN r_unused >= 0.2
              THEN date_trunc('second', created + r_used * (coalesce(revoked, :'now') - created))
         END,
         CASE WHEN revoked IS NOT NULL THEN 'admin' END, '',
         CASE WHEN r_unused >= 0.2 THEN 'app-' || i % 20 END,
         CASE WHEN r_unused >= 0.2 THEN '10.' || i % 250 || '.' || i / 250 % 250 || '.' || 1 + i % 7
         END
  FROM drawn JOIN accounts a ON a.n = 1 + i % :accounts;
INSERT INTO audit_events (id, org_id, actor, action, target_type, target_id, request_id,
                          created_at, details)
  SELECT pg_temp.uuid7(at, 'audit/' || action || '/' || target), :'org', actor, action,
         split_part(action, '.', 1), target, md5('request/' || action || '/' || target)::uuid::text,
         at, '{}'
  FROM (SELECT created_at AS at, created_by AS actor, 'service_account.create' AS action,
               id AS target
        FROM service_accounts WHERE org_id = :'org'
        UNION ALL
        SELECT created_at, created_by, 'token.create', id FROM tokens WHERE org_id = :'org'
        UNION ALL
        SELECT revoked_at, revoked_by, 'token.revoke', id FROM tokens
        WHERE org_id = :'org' AND revoked_at IS NOT NULL) e;
SQL
}

# The dataset's counts, for the figures' context.
counts() {
  psql -qAt -v now="$NOW" -v expire_before="$EXPIRE_BEFORE" -v audit_since="$AUDIT_SINCE" \
    "$PG_URL" <<'SQL'
SELECT json_build_object(
  'label', 'dataset', 'now', :'now',
  'tokens', count(*),
  'accounts', (SELECT count(*) FROM service_accounts WHERE org_id = 'bench'),
  'never_used', count(*) FILTER (WHERE last_used_at IS NULL),
  'mcp_write', count(*) FILTER (WHERE scopes LIKE '%mcp:write%'),
  'expiring_30d', count(*) FILTER (WHERE expire_at < :'expire_before'),
  'never_expiring', count(*) FILTER (WHERE expire_at IS NULL),
  'revoked', count(*) FILTER (WHERE revoked_at IS NOT NULL),
  'combined', count(*) FILTER (WHERE revoked_at IS NULL AND last_used_at IS NULL
                               AND scopes LIKE '%mcp:write%'),
  'other_org_tokens', (SELECT count(*) FROM tokens WHERE org_id = 'bench-other'),
  'audit_events', (SELECT count(*) FROM audit_events WHERE org_id = 'bench'),
  'audit_revokes', (SELECT count(*) FROM audit_events
                    WHERE org_id = 'bench' AND action = 'token.revoke'),
  'audit_by_carol', (SELECT count(*) FROM audit_events
                     WHERE org_id = 'bench' AND actor = 'carol@example.com'),
  'audit_last_7d', (SELECT count(*) FROM audit_events
                    WHERE org_id = 'bench' AND created_at > :'audit_since'),
  'tokens_table_mib', pg_total_relation_size('tokens') / 1048576,
  'audit_table_mib', pg_total_relation_size('audit_events') / 1048576)
FROM tokens WHERE org_id = 'bench';
SQL
}

# copy_to_sqlite DB: the PostgreSQL rows into a migrated SQLite database, times in the text form
# the server writes there; token hashes made anew (SQLite has no unhex() before 3.41).
copy_to_sqlite() {
  local db=$1 t='YYYY-MM-DD"T"HH24:MI:SS"+00:00"'
  psql -q -v ON_ERROR_STOP=1 "$PG_URL" <<SQL
CREATE FUNCTION pg_temp.t(timestamptz) RETURNS text LANGUAGE sql IMMUTABLE
  AS \$\$ SELECT to_char(\$1 AT TIME ZONE 'UTC', '$t') \$\$;
\copy (SELECT id, org_id, display_name, display_name_key, description, all_apps::int, pg_temp.t(created_at), pg_temp.t(updated_at), created_by, revision, state FROM service_accounts) TO '$WORK/accounts.csv' CSV
\copy (SELECT id, service_account_id, org_id, display_name, scopes, hint, pg_temp.t(created_at), created_by, pg_temp.t(expire_at), pg_temp.t(revoked_at), revoked_by, pg_temp.t(last_used_at), revoke_reason, allowed_cidrs, last_used_app_id, last_used_client_ip FROM tokens) TO '$WORK/tokens.csv' CSV
\copy (SELECT id, org_id, actor, action, target_type, target_id, request_id, pg_temp.t(created_at), details FROM audit_events) TO '$WORK/audit.csv' CSV
SQL
  sqlite3 -bail "$db" <<SQL
CREATE TABLE staging_accounts (id, org_id, display_name, display_name_key, description, all_apps, created_at, updated_at, created_by, revision, state);
CREATE TABLE staging_tokens (id, service_account_id, org_id, display_name, scopes, hint, created_at, created_by, expire_at, revoked_at, revoked_by, last_used_at, revoke_reason, allowed_cidrs, last_used_app_id, last_used_client_ip);
CREATE TABLE staging_audit (id, org_id, actor, action, target_type, target_id, request_id, created_at, details);
.import --csv $WORK/accounts.csv staging_accounts
.import --csv $WORK/tokens.csv staging_tokens
.import --csv $WORK/audit.csv staging_audit
BEGIN;
INSERT INTO service_accounts (id, org_id, display_name, display_name_key, description, all_apps, created_at, updated_at, created_by, revision, state)
  SELECT id, org_id, display_name, display_name_key, description, all_apps, created_at, updated_at, created_by, revision, state FROM staging_accounts;
INSERT INTO tokens (id, service_account_id, org_id, display_name, token_hash, scopes, hint, created_at, created_by, expire_at, revoked_at, revoked_by, last_used_at, revoke_reason, allowed_cidrs, last_used_app_id, last_used_client_ip)
  SELECT id, service_account_id, org_id, display_name, sha3(org_id || id, 256), scopes, hint, created_at, created_by,
         NULLIF(expire_at, ''), NULLIF(revoked_at, ''), NULLIF(revoked_by, ''), NULLIF(last_used_at, ''),
         NULLIF(revoke_reason, ''), allowed_cidrs, NULLIF(last_used_app_id, ''), NULLIF(last_used_client_ip, '')
  FROM staging_tokens;
INSERT INTO audit_events (id, org_id, actor, action, target_type, target_id, request_id, created_at, details)
  SELECT * FROM staging_audit;
DROP TABLE staging_accounts;
DROP TABLE staging_tokens;
DROP TABLE staging_audit;
COMMIT;
SQL
}

# The plans in PostgreSQL's log since byte OFFSET, by case (windows from the load generator's
# lines); also writes each distinct statement, placeholders made SQLite's, for EXPLAIN QUERY PLAN.
extract_plans() {
  local offset=$1
  python3 - "$PG_LOG" "$offset" "$BENCH_DB" "$WORK/windows.jsonl" "$WORK/statements.tsv" <<'PY'
import datetime, json, re, sys

log_path, offset, db, windows_path, statements_path = sys.argv[1:]
log = open(log_path, encoding="utf-8", errors="replace")
log.seek(int(offset))
windows = [json.loads(l) for l in open(windows_path) if l.startswith("{")]
head = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[(\d+)\] (?:(\S*)@(\S*) )?(\w+):  (.*)$")
records, current = [], None
for line in log:
    line = line.rstrip("\n")
    m = head.match(line)
    if m:
        current = None
        if m.group(4) == db and m.group(6).startswith("duration:") and "plan:" in m.group(6):
            at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            at = at.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
            current = {"at": at, "duration": m.group(6), "lines": []}
            records.append(current)
    elif current is not None:
        current["lines"].append(line)

def window(at):
    for w in windows:
        # The log's times are truncated to the millisecond, as are the windows'.
        if w["from_ms"] - 1 <= at <= w["to_ms"]:
            return w
    return None

groups = {}
for r in records:
    text = next((l.split("Query Text: ", 1)[1] for l in r["lines"] if "Query Text: " in l), "")
    if not re.search(r'FROM "(tokens|audit_events)"', text):
        continue
    w = window(r["at"])
    if w is None:
        continue
    key = (w["label"], w.get("pages", ""), text)
    groups.setdefault(key, []).append(r)

out = open(statements_path, "w")
for (label, pages, text), runs in groups.items():
    # The last execution's plan (after any switch to a generic plan); the middle one's for a
    # statement run many times (the report's pages: its last page is empty).
    shown = len(runs) if len(runs) <= 20 else len(runs) // 2 + 1
    plan = [l for l in runs[shown - 1]["lines"] if "Query Text: " not in l]
    generic = any(re.search(r"\$\d", l) for l in plan)
    durations = sorted(float(r["duration"].split()[1]) for r in runs)
    print(f"==== {label} ({pages or 'stream'}): {len(runs)} executions, "
          f"executor time min/median/max {durations[0]:.3f}/{durations[len(durations)//2]:.3f}/"
          f"{durations[-1]:.3f} ms; plan of execution {shown}, "
          f"{'generic' if generic else 'custom'}")
    print(re.sub(r"^SELECT .*? FROM", "SELECT … FROM", text))
    print("\n".join(l[1:] if l.startswith("\t") else l for l in plan))
    print()
    sqlite = re.sub(r"\$(\d+)", r"?\1", text).replace("E'\\\\'", "'\\'")
    out.write(f"{label}\t{pages or 'stream'}\t{sqlite}\n")
PY
}

psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $BENCH_DB" >/dev/null
say "seeding PostgreSQL: $TOKENS tokens over $ACCOUNTS accounts, $OTHER_TOKENS over $OTHER_ACCOUNTS"
serve postgres # migrates
seed bench "$ACCOUNTS" "$TOKENS" 0.2026
seed bench-other "$OTHER_ACCOUNTS" "$OTHER_TOKENS" 0.42
psql -q "$PG_URL" -c "VACUUM ANALYZE"
counts

case " $BACKENDS " in *" postgres "*)
  say "postgres: $CALLS calls per case and series, page size $PAGE_SIZE; $REPORT_RUNS reports"
  inventory postgres --calls "$CALLS" --report-runs "$REPORT_RUNS" --server-pid "$server"
esac
stop

SQLITE_DB=$WORK/sqlite/service-accounts.db
case " $BACKENDS " in *" sqlite "*) sqlite=1 ;; *) sqlite=0 ;; esac
if [ "$sqlite" = 1 ] || [ "$PLANS" = 1 ]; then
  say "seeding SQLite with the same rows"
  serve sqlite # migrates
  stop
  copy_to_sqlite "$SQLITE_DB"
  # The server never runs ANALYZE on its SQLite file: the plans are shown both ways.
  cp "$SQLITE_DB" "$WORK/plain.db"
  cp "$SQLITE_DB" "$WORK/analyzed.db"
  case $SQLITE_ANALYZE in
    1) "$LOAD" sqlite-plans --db "$SQLITE_DB" --statements /dev/null --analyze >/dev/null ;;
    shell) sqlite3 "$SQLITE_DB" ANALYZE ;;
  esac
fi
if [ "$sqlite" = 1 ]; then
  serve sqlite
  say "sqlite: $CALLS calls per case and series, page size $PAGE_SIZE; $REPORT_RUNS reports"
  inventory sqlite --calls "$CALLS" --report-runs "$REPORT_RUNS" --server-pid "$server"
  stop
fi

if [ "$PLANS" = 1 ]; then
  if [ ! -r "$PG_LOG" ]; then
    echo "PostgreSQL's log ($PG_LOG) is not readable: no plans" >&2
    exit 0
  fi
  say "plans: auto_explain on the bench database, $PLAN_CALLS calls per case and series"
  psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" <<SQL
ALTER DATABASE $BENCH_DB SET session_preload_libraries = 'auto_explain';
ALTER DATABASE $BENCH_DB SET auto_explain.log_min_duration = 0;
ALTER DATABASE $BENCH_DB SET auto_explain.log_analyze = on;
ALTER DATABASE $BENCH_DB SET auto_explain.log_buffers = on;
SQL
  offset=$(stat -c %s "$PG_LOG")
  serve postgres
  inventory postgres --calls "$PLAN_CALLS" --warmup 0 --report-runs 1 --gap 300ms \
    >"$WORK/windows.jsonl"
  stop
  sleep 1
  {
    echo "# PostgreSQL plans (auto_explain, ANALYZE, BUFFERS), the last execution of each statement"
    echo
    extract_plans "$offset"
    echo "# SQLite EXPLAIN QUERY PLAN of the same statements, without statistics (as the server"
    echo "# leaves its database)"
    echo
    "$LOAD" sqlite-plans --db "$WORK/plain.db" --statements "$WORK/statements.tsv"
    echo "# SQLite EXPLAIN QUERY PLAN of the same statements after ANALYZE"
    echo
    "$LOAD" sqlite-plans --db "$WORK/analyzed.db" --statements "$WORK/statements.tsv" --analyze
  } >"$PLANS_OUT"
  say "plans written to $PLANS_OUT"
fi
