#!/usr/bin/env bash
# The TypeScript client as an application gets it: packs clients/typescript, installs the tarball
# into a fresh application next to the runtime libraries clients/typescript/README.md tells users
# to install, and type-checks (strict) calls to TokenIntrospection and ServiceAccountAdmin.
#
# Twice: once with exactly the README's install line, once letting npm pick the protobuf runtime
# for the peers (an application that does not pin it, or already has a later one). Each time the
# application must hold exactly one @bufbuild/protobuf: with two, Connect's createClient refuses
# the package's service descriptors (TS2345).
#
# Runnable from any directory; needs Node.js and npm, and the npm registry. Leaves nothing behind
# but clients/typescript/node_modules and dist/. TYPESCRIPT_PACKAGE_DIR checks another copy of the
# package directory instead.
set -euo pipefail
pkg_dir="$(cd "${TYPESCRIPT_PACKAGE_DIR:-$(dirname "${BASH_SOURCE[0]}")/../clients/typescript}" && pwd)"
cd "$pkg_dir"

fail() {
  echo "typescript package: FAILED: $*" >&2
  exit 1
}

# Build with the locked toolchain (as generate.sh does: npm ci only when node_modules is missing
# or older than package-lock.json).
if [[ ! -x node_modules/.bin/tsc || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --silent --no-audit --no-fund
fi
npm run --silent build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball="$work/$(npm pack --ignore-scripts --silent --pack-destination "$work" | tail -n 1)"
[ -f "$tarball" ] || fail "npm pack wrote no tarball"
name=$(node -p 'require("./package.json").name')

# The runtime versions the README's install line names: the locked ones.
locked() {
  node -p "const p = require('./package.json');
    (p.devDependencies || {})['$1'] || (p.dependencies || {})['$1'] || ''"
}
protobuf=$(locked @bufbuild/protobuf)
connect=$(locked @connectrpc/connect)
connect_node=$(locked @connectrpc/connect-node)
peers="@bufbuild/protobuf@$protobuf @connectrpc/connect@$connect @connectrpc/connect-node@$connect_node"
grep -qF -- "$peers" README.md ||
  fail "README.md's install line does not name the locked versions: $peers"

tsc="$pkg_dir/node_modules/.bin/tsc"
types_node=$(locked @types/node)

# check LABEL PACKAGE... : a fresh application, `npm install PACKAGE...`, one protobuf runtime,
# tsc --noEmit in strict mode. Prints the runtime version it got.
check() {
  local label=$1
  shift
  local app="$work/app-$label"
  mkdir -p "$app"
  cat >"$app/package.json" <<'EOF'
{ "name": "app", "version": "1.0.0", "private": true, "type": "module" }
EOF
  cat >"$app/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "target": "es2022",
    "module": "nodenext",
    "moduleResolution": "nodenext",
    "types": ["node"],
    "strict": true,
    "noEmit": true
  },
  "files": ["app.ts"]
}
EOF
  cat >"$app/app.ts" <<EOF
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  DenialReason,
  fieldViolations,
  ServiceAccountAdmin,
  TokenIntrospection,
  type IntrospectResponse,
} from "$name";

const transport = createGrpcTransport({ baseUrl: "http://localhost:50051" });
const introspection = createClient(TokenIntrospection, transport);
const admin = createClient(ServiceAccountAdmin, transport);

export async function allowed(token: string): Promise<boolean> {
  const res: IntrospectResponse = await introspection.introspect(
    { token, orgId: "acme", appId: "checkout-ios", requiredScopes: ["mcp:read"] },
    { timeoutMs: 2000 },
  );
  if (!res.allowed) {
    const first: DenialReason = res.denialReason;
    console.log(first, res.denialReasons, res.inactiveReason, res.missingScopes.join(" "));
  }
  return res.allowed && res.serviceAccountId.length > 0;
}

export async function accountNames(jwt: string): Promise<string[]> {
  try {
    const res = await admin.listServiceAccounts(
      {},
      { headers: { authorization: \`Bearer \${jwt}\` } },
    );
    return res.serviceAccounts.map((account) => account.displayName);
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.InvalidArgument) {
      return fieldViolations(err).map((v) => v.field);
    }
    throw err;
  }
}

// The types are real, not any: a misspelled request field must not compile.
// @ts-expect-error
void introspection.introspect({ tokn: "emb_sa_x" });
EOF
  (cd "$app" && npm install --silent --no-audit --no-fund "$@" "@types/node@$types_node") >&2 ||
    fail "$label: npm install $*"
  local copies typechecks=yes
  copies=$(cd "$app" && find node_modules -path '*/@bufbuild/protobuf/package.json' | grep -c .)
  (cd "$app" && "$tsc" -p tsconfig.json) >&2 || typechecks=no
  if [ "$copies" -ne 1 ]; then
    (cd "$app" && npm ls --all @bufbuild/protobuf) >&2 || true
    fail "$label: the application holds $copies copies of @bufbuild/protobuf, not one" \
      "(type-checks: $typechecks)"
  fi
  [ "$typechecks" = yes ] ||
    fail "$label: the application does not type-check against the package (tsc --strict)"
  (cd "$app" && node -p 'require("./node_modules/@bufbuild/protobuf/package.json").version')
}

# shellcheck disable=SC2086 # $peers is a list of words
readme_version=$(check readme "$tarball" $peers)
npm_version=$(check npm-picks "$tarball" "@connectrpc/connect@$connect" \
  "@connectrpc/connect-node@$connect_node")
echo "typescript package: OK: the packed $name installs into a fresh application with one" \
  "@bufbuild/protobuf ($readme_version as the README says, $npm_version as npm picks) and" \
  "type-checks createClient(TokenIntrospection|ServiceAccountAdmin, createGrpcTransport(...))"
