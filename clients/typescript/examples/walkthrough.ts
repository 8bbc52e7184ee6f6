// The README's walkthrough against a live server, asserting every answer (`npm test`).
//
//   SERVICE_ACCOUNTS_ADDR  server address, `http://host:port` or `host:port`
//                          (default http://localhost:50051)
//   ADMIN_JWT              org-admin JWT for org `acme` (`service-accounts admin-token ...`)
//
// Exits non-zero on the first unexpected answer. Each run creates an account with a fresh name
// and deletes it at the end, so it can run any number of times against one server.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  DenialReason,
  fieldViolations,
  InactiveReason,
  ServiceAccountAdmin,
  Token_RevokeReason,
  TokenIntrospection,
  type AuditEvent,
} from "../src/index.js";

const TIMEOUT_MS = 10_000;
const call = { timeoutMs: TIMEOUT_MS };

function baseUrl(): string {
  const addr = process.env.SERVICE_ACCOUNTS_ADDR?.trim() || "http://localhost:50051";
  return /^https?:\/\//.test(addr) ? addr : `http://${addr}`;
}

function adminJwt(): string {
  const jwt = process.env.ADMIN_JWT?.trim();
  if (!jwt) {
    console.error(
      "ADMIN_JWT is not set: it must be an org-admin JWT for org `acme`, for example\n" +
        "  export ADMIN_JWT=$(cargo run -q -- admin-token --data-dir ./data --org-id acme --user-id alice)",
    );
    process.exit(2);
  }
  return jwt;
}


async function main(): Promise<void> {
  const url = baseUrl();
  const jwt = adminJwt();

  // One HTTP/2 connection for both clients; closed at the end so the process can exit.
  const session = new Http2SessionManager(url);
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${jwt}`);
    return next(req);
  };
  const admin = createClient(
    ServiceAccountAdmin,
    createGrpcTransport({ baseUrl: url, sessionManager: session, interceptors: [bearer] }),
  );
  const introspection = createClient(
    TokenIntrospection,
    createGrpcTransport({ baseUrl: url, sessionManager: session }),
  );

  console.log(`server: ${url}`);
  let accountId = "";
  try {
    // 1. Create a service account with access to one app.
    const name = `CI Pipeline ${randomBytes(4).toString("hex")}`;
    const { serviceAccount: account } = await admin.createServiceAccount(
      { displayName: name, appAccess: { appIds: ["checkout-ios"] } },
      call,
    );
    assert.ok(account, "CreateServiceAccount returned no account");
    accountId = account.serviceAccountId;
    assert.match(accountId, /^[0-9a-f-]{36}$/);
    assert.equal(account.orgId, "acme");
    assert.equal(account.displayName, name);
    assert.deepEqual(account.appAccess?.appIds, ["checkout-ios"]);
    console.log(`created service account ${accountId} "${name}" (apps: checkout-ios)`);

    // 2. Issue a token. The secret appears only in this response.
    const created = await admin.createToken(
      {
        serviceAccountId: accountId,
        displayName: "GitHub Actions",
        scopes: ["mcp:tools:call", "mcp:read"],
      },
      call,
    );
    const secret = created.secret;
    const tokenId = created.token?.tokenId ?? "";
    assert.match(secret, /^emb_sa_/);
    assert.ok(tokenId, "CreateToken returned no token id");
    assert.deepEqual(created.token?.scopes, ["mcp:read", "mcp:tools:call"]);
    // Log the token's hint, never its secret.
    console.log(`issued token ${tokenId} (${created.token?.hint}); secret received, not shown`);

    // 3. Introspect as a service in org acme acting on checkout-ios: allowed.
    const ok = await introspection.introspect(
      { token: secret, orgId: "acme", appId: "checkout-ios", requiredScopes: ["mcp:read"] },
      call,
    );
    assert.equal(ok.active, true);
    assert.equal(ok.allowed, true);
    assert.equal(ok.denialReason, DenialReason.UNSPECIFIED);
    assert.equal(ok.orgId, "acme");
    assert.equal(ok.serviceAccountId, accountId);
    assert.equal(ok.serviceAccountDisplayName, name);
    assert.equal(ok.tokenId, tokenId);
    console.log(`introspect (acme, checkout-ios, mcp:read): active=${ok.active} allowed=${ok.allowed}`);

    // 4. The same app id in another org is another app: active, but not allowed.
    const other = await introspection.introspect(
      { token: secret, orgId: "globex", appId: "checkout-ios" },
      call,
    );
    assert.equal(other.active, true);
    assert.equal(other.allowed, false);
    assert.equal(other.denialReason, DenialReason.ORG_MISMATCH);
    assert.equal(other.serviceAccountId, accountId);
    console.log(
      `introspect (globex, checkout-ios): active=${other.active} allowed=${other.allowed} ` +
        `denial=${DenialReason[other.denialReason]}`,
    );

    // 5. Revoke the token; it stops working at once.
    const { token: revoked } = await admin.revokeToken(
      { serviceAccountId: accountId, tokenId },
      call,
    );
    assert.ok(revoked?.revokeTime, "RevokeToken returned no revoke time");
    assert.equal(revoked.revokeReason, Token_RevokeReason.ADMIN);
    assert.ok(revoked.revokedBy, "RevokeToken returned no revoking admin");
    console.log(`revoked token ${tokenId} by ${revoked.revokedBy}`);

    const gone = await introspection.introspect({ token: secret }, call);
    assert.equal(gone.active, false);
    assert.equal(gone.allowed, false);
    assert.equal(gone.inactiveReason, InactiveReason.REVOKED);
    assert.equal(gone.denialReason, DenialReason.TOKEN_INACTIVE);
    assert.equal(gone.serviceAccountId, "", "an inactive token must reveal no identity");
    console.log(
      `introspect after revoke: active=${gone.active} inactive=${InactiveReason[gone.inactiveReason]}`,
    );

    // 6. Bad input: INVALID_ARGUMENT, with a google.rpc.BadRequest detail naming the fields.
    const badCreate = await expectError(
      admin.createServiceAccount({ displayName: "" }, call),
      Code.InvalidArgument,
    );
    printViolations("CreateServiceAccount with an empty display name", badCreate);
    assert.ok(
      fieldViolations(badCreate).some((v) => v.field === "display_name"),
      "expected a field violation on display_name",
    );

    const badIntrospect = await expectError(
      introspection.introspect({ token: secret, appId: "checkout-ios" }, call),
      Code.InvalidArgument,
    );
    printViolations("Introspect with app_id but no org_id", badIntrospect);
    assert.ok(
      fieldViolations(badIntrospect).some((v) => v.field === "org_id"),
      "expected a field violation on org_id",
    );

    // 7. The audit trail of this run (events are listed oldest first, across pages).
    const mine = (await listAllAuditEvents()).filter(
      (e) => e.targetId === accountId || e.targetId === tokenId,
    );
    console.log("audit events of this run:");
    for (const e of mine) {
      const at = e.createTime ? timestampDate(e.createTime).toISOString() : "?";
      console.log(`  ${at}  ${e.actor}  ${e.action}  ${e.targetType}/${e.targetId}  ${e.details}`);
      assert.equal(e.orgId, "acme");
    }
    assert.deepEqual(
      mine.map((e) => e.action),
      ["service_account.create", "token.create", "token.revoke"],
    );
  } finally {
    // Clean up, so that repeated runs stay far from the per-org account quota.
    if (accountId) {
      try {
        await admin.deleteServiceAccount({ serviceAccountId: accountId }, call);
        console.log(`deleted service account ${accountId}`);
      } catch (err) {
        console.error(`could not delete service account ${accountId}: ${String(err)}`);
      }
    }
    session.abort();
  }
  console.log("walkthrough OK");

  async function listAllAuditEvents(): Promise<AuditEvent[]> {
    const events: AuditEvent[] = [];
    let pageToken = "";
    do {
      const page = await admin.listAuditEvents({ pageSize: 1000, pageToken }, call);
      events.push(...page.auditEvents);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return events;
  }
}

/** Awaits a call that must fail with `code`, and returns its error. */
async function expectError(pending: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await pending;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.message}`);
    return err;
  }
  assert.fail(`expected ${Code[code]}, but the call succeeded`);
}

function printViolations(what: string, err: ConnectError): void {
  console.log(`${what}: ${Code[err.code]} "${err.rawMessage}"`);
  for (const v of fieldViolations(err)) {
    console.log(`  field violation: ${v.field}: ${v.description}`);
  }
}

main().catch((err: unknown) => {
  if (err instanceof ConnectError) {
    console.error(`FAILED: ${Code[err.code]}: ${err.rawMessage}`);
    for (const v of fieldViolations(err)) {
      console.error(`  field violation: ${v.field}: ${v.description}`);
    }
  } else {
    console.error("FAILED:", err);
  }
  process.exitCode = 1;
});
