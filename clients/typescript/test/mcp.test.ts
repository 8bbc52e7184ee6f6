// The MCP verifier end to end: the real control-plane binary, the example MCP server
// (examples/mcp-server.ts) in this process, and the SDK's own MCP client.
//
//   SERVICE_ACCOUNTS_BIN  the server binary
//                         (default /root/.cache/service-accounts-ci/target/release/service-accounts)
//
//   npm run build && node --test dist/test/mcp.test.js

import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createTcpServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import {
  StreamableHTTPClientTransport,
  StreamableHTTPError,
} from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { InvalidTokenError } from "@modelcontextprotocol/sdk/server/auth/errors.js";
import type { OAuthTokenVerifier } from "@modelcontextprotocol/sdk/server/auth/provider.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { createApp } from "../examples/mcp-server.js";
import {
  ServiceAccountAdmin,
  serviceAccountTokenVerifier,
  TokenIntrospection,
  type ServiceAccountTokenVerifier,
} from "../src/index.js";

const BIN =
  process.env.SERVICE_ACCOUNTS_BIN?.trim() ||
  "/root/.cache/service-accounts-ci/target/release/service-accounts";
const run = promisify(execFile);

async function freePort(): Promise<number> {
  const srv = createTcpServer();
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

// ---- the control plane ----------------------------------------------------------------------

let dataDir = "";
let controlPlane: ChildProcess | undefined;
let controlPlaneLog = "";
let controlPlaneUrl = "";
let session: Http2SessionManager | undefined;
let admin: ConnectClient<typeof ServiceAccountAdmin>;

async function startControlPlane(): Promise<void> {
  dataDir = await mkdtemp(join(tmpdir(), "sa-mcp-test-"));
  const port = await freePort();
  controlPlaneUrl = `http://127.0.0.1:${port}`;
  const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  controlPlane = child;
  const keep = (chunk: Buffer) => {
    controlPlaneLog = (controlPlaneLog + chunk.toString()).slice(-8000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code, signal) =>
      reject(new Error(`${BIN} exited (${code ?? signal}) before serving:\n${controlPlaneLog}`)),
    ),
  );
  exited.catch(() => {});

  // Serving: an Introspect of a made-up token answers (inactive).
  const probe = createClient(TokenIntrospection, createGrpcTransport({ baseUrl: controlPlaneUrl }));
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      await Promise.race([probe.introspect({ token: "emb_sa_probe" }, { timeoutMs: 1000 }), exited]);
      break;
    } catch (err) {
      if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
        throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  const { stdout } = await run(BIN, [
    "admin-token",
    "--data-dir",
    dataDir,
    "--org-id",
    "acme",
    "--user-id",
    "alice",
  ]);
  const jwt = stdout.trim();
  assert.ok(jwt.split(".").length === 3, `admin-token printed no JWT: ${stdout}`);
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${jwt}`);
    return next(req);
  };
  session = new Http2SessionManager(controlPlaneUrl);
  admin = createClient(
    ServiceAccountAdmin,
    createGrpcTransport({ baseUrl: controlPlaneUrl, sessionManager: session, interceptors: [bearer] }),
  );
}

async function stopControlPlane(): Promise<void> {
  const child = controlPlane;
  if (child && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await gone;
  }
}

/**
 * Stops the control plane and returns once every one of its threads is stopped. kill(2) only
 * starts a group stop: a busy machine may let a worker thread answer one more request first.
 */
async function pauseControlPlane(): Promise<void> {
  const pid = controlPlane!.pid!;
  controlPlane!.kill("SIGSTOP");
  const deadline = Date.now() + 10_000;
  for (;;) {
    const tasks = await readdir(`/proc/${pid}/task`);
    const states = await Promise.all(
      // The state follows the command name, which is in parentheses.
      tasks.map(async (t) => {
        const stat = await readFile(`/proc/${pid}/task/${t}/stat`, "utf8");
        return stat[stat.lastIndexOf(") ") + 2];
      }),
    );
    if (states.every((state) => state === "T")) {
      return;
    }
    assert.ok(Date.now() < deadline, `control plane not stopped: thread states ${states.join("")}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function createAccount(displayName: string, appIds: string[] | "all"): Promise<string> {
  const { serviceAccount } = await admin.createServiceAccount({
    displayName,
    appAccess: appIds === "all" ? { allApps: true } : { appIds },
  });
  assert.ok(serviceAccount);
  return serviceAccount.serviceAccountId;
}

async function createToken(
  serviceAccountId: string,
  scopes: string[],
  expireTime?: Date,
): Promise<{ secret: string; tokenId: string }> {
  const res = await admin.createToken({
    serviceAccountId,
    displayName: `token ${scopes.join(" ")} ${Math.random()}`,
    scopes,
    ...(expireTime ? { expireTime: timestampFromDate(expireTime) } : {}),
  });
  assert.ok(res.token && res.secret.startsWith("emb_sa_"));
  return { secret: res.secret, tokenId: res.token.tokenId };
}

// ---- the MCP server and the SDK's client ----------------------------------------------------

let mcpServer: Server;
let mcpUrl: URL;
let verifier: ServiceAccountTokenVerifier;
const fallbackSaw: string[] = [];

// The server's own OAuth verifier, for tokens that are not service-account tokens. It also
// claims a service-account-looking identity in `extra`, which the helpers must not believe.
const fallback: OAuthTokenVerifier = {
  async verifyAccessToken(token) {
    fallbackSaw.push(token);
    if (token !== "oauth-user-alice") {
      throw new InvalidTokenError("unknown OAuth token");
    }
    return {
      token,
      clientId: "alice-oauth-client",
      scopes: ["mcp:tools:call", "mcp:read", "mcp:write"],
      expiresAt: Math.floor(Date.now() / 1000) + 300,
      extra: {
        orgId: "acme",
        serviceAccountId: "forged",
        tokenId: "forged",
        scopes: ["mcp:read"],
        appAccess: { allApps: true },
      },
    };
  },
};

/** Response headers of the last request the MCP client made (through the SDK's `fetch` option). */
let lastResponse: { status: number; wwwAuthenticate: string | null } | undefined;

async function mcpClient(token?: string): Promise<Client> {
  const client = new Client({ name: "mcp-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(mcpUrl, {
    ...(token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : {}),
    fetch: async (url, init) => {
      const res = await fetch(url, init);
      lastResponse = { status: res.status, wwwAuthenticate: res.headers.get("www-authenticate") };
      return res;
    },
  });
  await client.connect(transport);
  return client;
}

/** The HTTP status the SDK client's connect or call failed with. */
async function httpFailure(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof StreamableHTTPError, `not an HTTP failure: ${String(err)}`);
    assert.equal(typeof err.code, "number");
    return err.code as number;
  }
  assert.fail("the request was allowed");
}

async function callTool(client: Client, name: string, args: Record<string, unknown> = {}) {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

function text(result: CallToolResult): string {
  const first = result.content[0];
  assert.ok(first && first.type === "text", `no text content: ${JSON.stringify(result)}`);
  return first.text;
}

function ok(result: CallToolResult): Record<string, unknown> {
  assert.ok(!result.isError, `tool error: ${JSON.stringify(result)}`);
  return JSON.parse(text(result)) as Record<string, unknown>;
}

function refused(result: CallToolResult): string {
  assert.equal(result.isError, true, `not refused: ${JSON.stringify(result)}`);
  return text(result);
}

// ---- the cases ------------------------------------------------------------------------------

describe("MCP server protected by serviceAccountTokenVerifier", { timeout: 120_000 }, () => {
  let account = "";
  let readToken = "";
  let writeToken = "";
  let writeExpiry = new Date();
  const clients: Client[] = [];
  const connect = async (token?: string) => {
    const client = await mcpClient(token);
    clients.push(client);
    return client;
  };

  before(async () => {
    await startControlPlane();
    account = await createAccount("MCP Reader", ["checkout-ios"]);
    readToken = (await createToken(account, ["mcp:tools:call", "mcp:read"])).secret;
    writeExpiry = new Date(Date.now() + 3600_000);
    writeToken = (await createToken(account, ["mcp:tools:call", "mcp:read", "mcp:write"], writeExpiry))
      .secret;

    verifier = serviceAccountTokenVerifier({ baseUrl: controlPlaneUrl, fallback, timeoutMs: 1000 });
    mcpServer = createHttpServer();
    await new Promise<void>((resolve) => mcpServer.listen(0, "127.0.0.1", resolve));
    const { port } = mcpServer.address() as AddressInfo;
    mcpUrl = new URL(`http://127.0.0.1:${port}/mcp`);
    mcpServer.on("request", createApp({ verifier, serverUrl: mcpUrl }));
  });

  after(async () => {
    await Promise.allSettled(clients.map((client) => client.close()));
    verifier?.close();
    await new Promise((resolve) => mcpServer?.close(resolve));
    mcpServer?.closeAllConnections();
    session?.abort();
    await stopControlPlane();
    if (dataDir) {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("1. allows a read with mcp:read on a granted app; the tool sees the identity", async () => {
    const client = await connect(readToken);
    const summary = ok(await callTool(client, "get_crash_summary", { app_id: "checkout-ios" }));
    assert.equal(summary.app_id, "checkout-ios");
    assert.equal(summary.org_id, "acme");
    assert.equal(summary.requested_by, account);
    assert.equal(typeof summary.crash_free_sessions, "number");
    const me = ok(await callTool(client, "whoami"));
    assert.equal(me.kind, "service_account");
    assert.equal(me.service_account_id, account);
    assert.equal(me.service_account_name, "MCP Reader");
    assert.deepEqual(me.scopes, ["mcp:read", "mcp:tools:call"]);
    assert.deepEqual(me.app_access, { appIds: ["checkout-ios"] });
  });

  it("2. refuses a write with a read-only token, naming mcp:write", async () => {
    const client = await connect(readToken);
    const args = { app_id: "checkout-ios", version: "1.2.3", note: "hotfix" };
    assert.equal(refused(await callTool(client, "annotate_release", args)), "missing scope: mcp:write");
    // The same write with mcp:write goes through.
    const writer = await connect(writeToken);
    assert.equal(ok(await callTool(writer, "annotate_release", args)).annotated_by, account);
  });

  it("3. refuses an app not granted, naming the app", async () => {
    const client = await connect(readToken);
    assert.equal(
      refused(await callTool(client, "get_crash_summary", { app_id: "checkout-android" })),
      "no access to app: checkout-android",
    );
    // An account with access to all apps may read any app of its org.
    const everything = await createAccount("MCP All Apps", "all");
    const token = (await createToken(everything, ["mcp:tools:call", "mcp:read"])).secret;
    const all = await connect(token);
    assert.equal(
      ok(await callTool(all, "get_crash_summary", { app_id: "checkout-android" })).requested_by,
      everything,
    );
  });

  it("4. without a token: 401 with a Bearer challenge naming the resource metadata", async () => {
    assert.equal(await httpFailure(connect()), 401);
    const metadataUrl = new URL("/.well-known/oauth-protected-resource/mcp", mcpUrl).href;
    const challenge = lastResponse?.wwwAuthenticate ?? "";
    assert.match(challenge, /^Bearer /);
    assert.ok(
      challenge.includes(`resource_metadata="${metadataUrl}"`),
      `challenge without resource_metadata: ${challenge}`,
    );
    const metadata = (await (await fetch(metadataUrl)).json()) as Record<string, unknown>;
    assert.equal(metadata.resource, mcpUrl.href);
  });

  it("5. a malformed token is 401; a revoked token is 401 on the next request", async () => {
    assert.equal(await httpFailure(connect("emb_sa_not-a-token")), 401);
    assert.match(lastResponse?.wwwAuthenticate ?? "", /error="invalid_token"/);

    const revoked = await createToken(account, ["mcp:tools:call", "mcp:read"]);
    const client = await connect(revoked.secret);
    ok(await callTool(client, "get_crash_summary", { app_id: "checkout-ios" }));
    await admin.revokeToken({ serviceAccountId: account, tokenId: revoked.tokenId });
    const status = await httpFailure(
      callTool(client, "get_crash_summary", { app_id: "checkout-ios" }),
    );
    assert.equal(status, 401);
    assert.match(lastResponse?.wwwAuthenticate ?? "", /error="invalid_token"/);
  });

  it("7. a token that is not emb_sa_ reaches the fallback verifier and is served", async () => {
    const client = await connect("oauth-user-alice");
    assert.ok(fallbackSaw.includes("oauth-user-alice"));
    const me = ok(await callTool(client, "whoami"));
    assert.deepEqual(me, {
      kind: "oauth",
      client_id: "alice-oauth-client",
      scopes: ["mcp:tools:call", "mcp:read", "mcp:write"],
    });
    // Its look-alike identity in `extra` is not a service account's.
    assert.equal(
      refused(await callTool(client, "get_crash_summary", { app_id: "checkout-ios" })),
      "this tool requires a service-account token",
    );
    // The fallback's own refusal is a 401; emb_sa_ tokens never reach it.
    assert.equal(await httpFailure(connect("oauth-user-mallory")), 401);
    assert.ok(!fallbackSaw.some((token) => token.startsWith("emb_sa_")));
  });

  it("8. a token that never expires is accepted; one with an expiry reports it", async () => {
    const before = Math.floor(Date.now() / 1000);
    const forever = ok(await callTool(await connect(readToken), "whoami"));
    const horizon = forever.expires_at as number;
    assert.ok(horizon > before && horizon <= before + 61, `expiresAt ${horizon}, now ${before}`);

    const expiring = ok(await callTool(await connect(writeToken), "whoami"));
    assert.equal(expiring.expires_at, Math.floor(writeExpiry.getTime() / 1000));
  });

  // Last: it stops the control plane.
  it("6. control plane stopped: a server error, never 401, never allowed", async () => {
    const client = await connect(readToken);
    ok(await callTool(client, "get_crash_summary", { app_id: "checkout-ios" }));

    // Hanging (SIGSTOP): the verifier's deadline passes.
    try {
      await pauseControlPlane();
      const hung = callTool(client, "get_crash_summary", { app_id: "checkout-ios" });
      await assert.rejects(hung, /"error":"server_error".*DeadlineExceeded/);
      assert.equal(await httpFailure(hung), 500);
    } finally {
      controlPlane!.kill("SIGCONT");
    }

    // Gone (SIGKILL): connection refused.
    await stopControlPlane();

    const call = callTool(client, "get_crash_summary", { app_id: "checkout-ios" });
    await assert.rejects(call, /"error":"server_error".*Unavailable/);
    const status = await httpFailure(call);
    assert.ok(status >= 500 && status < 600, `status ${status}`);
    assert.equal(lastResponse?.wwwAuthenticate, null);
    // A new session, a malformed-looking one and a fallback token: the same, and the fallback
    // still works without the control plane.
    assert.equal(await httpFailure(connect(writeToken)), 500);
    ok(await callTool(await connect("oauth-user-alice"), "whoami"));
  });
});
