// What the service-account verifier adds to an MCP tool call: tools/call latency through the
// SDK's client against examples/mcp-server.ts, once without authentication and once behind
// requireBearerAuth + serviceAccountTokenVerifier, in one process and one run.
//
//   SERVICE_ACCOUNTS_BIN  the server binary to start on a temporary data dir
//                         (default /root/.cache/service-accounts-ci/target/release/service-accounts)
//   CALLS                 sequential calls per variant (default 500), after 50 warm-up calls
//
//   npm run build && node dist/examples/mcp-latency.js
//
// Both variants call the same tool (`whoami`) on the same stateless server code; calls alternate
// between them so that drift of the machine affects both alike. The difference is one
// `Introspect` round trip per HTTP request, plus the middleware.

import { execFile, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createMcpExpressApp } from "@modelcontextprotocol/sdk/server/express.js";
import { createApp, handleMcpRequest } from "./mcp-server.js";
import {
  ServiceAccountAdmin,
  serviceAccountTokenVerifier,
  TokenIntrospection,
} from "../src/index.js";

const BIN =
  process.env.SERVICE_ACCOUNTS_BIN?.trim() ||
  "/root/.cache/service-accounts-ci/target/release/service-accounts";
const CALLS = Number(process.env.CALLS ?? 500);
const WARMUP = 50;

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

async function freePort(): Promise<number> {
  const probe = createServer();
  const port = await listen(probe);
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
}

function summary(label: string, samples: number[]): string {
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  const f = (ms: number) => ms.toFixed(2).padStart(7);
  return (
    `${label.padEnd(38)} n=${samples.length}  p50 ${f(percentile(sorted, 50))} ms` +
    `  p90 ${f(percentile(sorted, 90))} ms  p99 ${f(percentile(sorted, 99))} ms  mean ${f(mean)} ms`
  );
}

async function main(): Promise<void> {
  // The control plane, with one account and token.
  const dataDir = await mkdtemp(join(tmpdir(), "sa-mcp-latency-"));
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    stdio: "ignore",
  });
  const session = new Http2SessionManager(baseUrl);
  const introspection = createClient(
    TokenIntrospection,
    createGrpcTransport({ baseUrl, sessionManager: session }),
  );
  for (let i = 0; ; i++) {
    try {
      await introspection.introspect({ token: "emb_sa_probe" }, { timeoutMs: 1000 });
      break;
    } catch (err) {
      if (i > 300) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  const { stdout } = await promisify(execFile)(BIN, [
    "admin-token", "--data-dir", dataDir, "--org-id", "acme", "--user-id", "alice",
  ]);
  const headers = { headers: { authorization: `Bearer ${stdout.trim()}` } };
  const admin = createClient(
    ServiceAccountAdmin,
    createGrpcTransport({ baseUrl, sessionManager: session }),
  );
  const { serviceAccount } = await admin.createServiceAccount(
    { displayName: "Latency", appAccess: { appIds: ["checkout-ios"] } },
    headers,
  );
  const { secret } = await admin.createToken(
    {
      serviceAccountId: serviceAccount!.serviceAccountId,
      displayName: "latency",
      scopes: ["mcp:tools:call", "mcp:read"],
    },
    headers,
  );

  // The same MCP server twice: without authentication, and protected.
  const open = createMcpExpressApp();
  open.post("/mcp", handleMcpRequest);
  const openServer = createServer(open);
  const openUrl = new URL(`http://127.0.0.1:${await listen(openServer)}/mcp`);

  const verifier = serviceAccountTokenVerifier({ baseUrl });
  const protectedServer = createServer();
  const protectedUrl = new URL(`http://127.0.0.1:${await listen(protectedServer)}/mcp`);
  protectedServer.on("request", createApp({ verifier, serverUrl: protectedUrl }));

  const connect = async (url: URL, token?: string) => {
    const client = new Client({ name: "latency", version: "1.0.0" });
    await client.connect(
      new StreamableHTTPClientTransport(url, {
        ...(token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : {}),
      }),
    );
    return client;
  };
  const openClient = await connect(openUrl);
  const protectedClient = await connect(protectedUrl, secret);

  const time = async (client: Client, name: string, args: Record<string, unknown> = {}) => {
    const start = performance.now();
    const result = await client.callTool({ name, arguments: args });
    const ms = performance.now() - start;
    if (result.isError) throw new Error(`${name} failed: ${JSON.stringify(result)}`);
    return ms;
  };
  const timeIntrospect = async () => {
    const start = performance.now();
    const res = await introspection.introspect({ token: secret }, { timeoutMs: 2000 });
    if (!res.active) throw new Error("token not active");
    return performance.now() - start;
  };

  for (let i = 0; i < WARMUP; i++) {
    await time(openClient, "whoami");
    await time(protectedClient, "whoami");
    await time(protectedClient, "get_crash_summary", { app_id: "checkout-ios" });
    await timeIntrospect();
  }
  const without: number[] = [];
  const withVerifier: number[] = [];
  const withChecks: number[] = [];
  const introspect: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    without.push(await time(openClient, "whoami"));
    withVerifier.push(await time(protectedClient, "whoami"));
    withChecks.push(await time(protectedClient, "get_crash_summary", { app_id: "checkout-ios" }));
    introspect.push(await timeIntrospect());
  }

  console.log(`node ${process.version}, ${CALLS} sequential calls each, alternating, after ${WARMUP} warm-up`);
  console.log(summary("tools/call whoami, no auth", without));
  console.log(summary("tools/call whoami, verifier", withVerifier));
  console.log(summary("tools/call get_crash_summary, +checks", withChecks));
  console.log(summary("Introspect alone (gRPC)", introspect));
  const p50 = (s: number[]) => percentile([...s].sort((a, b) => a - b), 50);
  console.log(`verifier adds ~${(p50(withVerifier) - p50(without)).toFixed(2)} ms at p50`);

  await openClient.close();
  await protectedClient.close();
  verifier.close();
  session.abort();
  openServer.closeAllConnections();
  protectedServer.closeAllConnections();
  await new Promise((resolve) => openServer.close(resolve));
  await new Promise((resolve) => protectedServer.close(resolve));
  child.kill("SIGTERM");
  await new Promise((resolve) => child.once("exit", resolve));
  await rm(dataDir, { recursive: true, force: true });
}

await main();
