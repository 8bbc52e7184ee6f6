// An MCP server (official SDK, Streamable HTTP on Express) that accepts service-account tokens.
//
//   SERVICE_ACCOUNTS_ADDR  the control plane's gRPC address, `http://host:port` or `host:port`
//                          (default http://localhost:50051)
//   PORT                   port to serve on (default 3000)
//   MCP_SERVER_URL         the server's public URL (default http://localhost:$PORT/mcp)
//
//   node dist/examples/mcp-server.js
//
// Every request needs a token with `mcp:tools:call`; `get_crash_summary` also needs `mcp:read`
// and `annotate_release` `mcp:write`, and both need access to the app they are asked about. The
// tools return sample data: they show where a real server checks access, not what it serves.

import { pathToFileURL } from "node:url";
import type { Express, Request, Response } from "express";
import { z } from "zod";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createMcpExpressApp } from "@modelcontextprotocol/sdk/server/express.js";
import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
import { metadataHandler } from "@modelcontextprotocol/sdk/server/auth/handlers/metadata.js";
import { getOAuthProtectedResourceMetadataUrl } from "@modelcontextprotocol/sdk/server/auth/router.js";
import type { OAuthTokenVerifier } from "@modelcontextprotocol/sdk/server/auth/provider.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import {
  requireApp,
  requireScopes,
  serviceAccountIdentity,
  serviceAccountTokenVerifier,
} from "../src/index.js";

function json(value: unknown): CallToolResult {
  return { content: [{ type: "text", text: JSON.stringify(value) }] };
}

/** The MCP server with its tools; one per request (stateless Streamable HTTP). */
export function createMcpServer(): McpServer {
  const server = new McpServer({ name: "crash-insights", version: "1.0.0" });

  // Needs only the server-level scope: who is calling, as the tools see it.
  server.registerTool(
    "whoami",
    { description: "The caller's identity", inputSchema: {} },
    async (_args, { authInfo }) => {
      const identity = serviceAccountIdentity(authInfo);
      if (identity) {
        return json({
          kind: "service_account",
          org_id: identity.orgId,
          service_account_id: identity.serviceAccountId,
          service_account_name: identity.serviceAccountName,
          token_id: identity.tokenId,
          scopes: identity.scopes,
          app_access: identity.appAccess,
          expires_at: authInfo?.expiresAt,
        });
      }
      // A token the server's own OAuth verifier (the fallback) accepted.
      return json({ kind: "oauth", client_id: authInfo?.clientId, scopes: authInfo?.scopes });
    },
  );

  // A tool that reads: mcp:read and access to the app, in the token's org.
  server.registerTool(
    "get_crash_summary",
    {
      description: "Crash summary of an app over the last 24 hours",
      inputSchema: { app_id: z.string().describe("The app, e.g. checkout-ios") },
      annotations: { readOnlyHint: true },
    },
    async ({ app_id }, { authInfo }) => {
      requireScopes(authInfo, "mcp:read");
      const identity = requireApp(authInfo, app_id);
      return json({
        org_id: identity.orgId,
        app_id,
        crash_free_sessions: 0.992,
        top_crash: "NullPointerException in CheckoutViewModel.submit",
        requested_by: identity.serviceAccountId,
      });
    },
  );

  // A tool that writes: mcp:write and access to the app.
  server.registerTool(
    "annotate_release",
    {
      description: "Attach a note to a release of an app",
      inputSchema: { app_id: z.string(), version: z.string(), note: z.string().max(500) },
    },
    async ({ app_id, version, note }, { authInfo }) => {
      requireScopes(authInfo, "mcp:write");
      const identity = requireApp(authInfo, app_id);
      console.log(
        `service account '${identity.serviceAccountName}' annotated ${app_id} ${version}: ${note}`,
      );
      return json({ org_id: identity.orgId, app_id, version, note, annotated_by: identity.serviceAccountId });
    },
  );

  return server;
}

/** One MCP request (stateless Streamable HTTP): a server and transport for this request only. */
export async function handleMcpRequest(req: Request, res: Response): Promise<void> {
  const server = createMcpServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on("close", () => {
    void transport.close();
    void server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  } catch (err) {
    console.error("MCP request failed:", err);
    if (!res.headersSent) {
      res.status(500).json({
        jsonrpc: "2.0",
        error: { code: -32603, message: "Internal server error" },
        id: null,
      });
    }
  }
}

export interface AppOptions {
  /** Verifies bearer tokens: `serviceAccountTokenVerifier(...)`. */
  verifier: OAuthTokenVerifier;
  /** The MCP endpoint's public URL, e.g. https://mcp.example.com/mcp. */
  serverUrl: URL;
}

/** The Express application: protected-resource metadata and the protected MCP endpoint. */
export function createApp({ verifier, serverUrl }: AppOptions): Express {
  const app = createMcpExpressApp();

  // RFC 9728 metadata, where the 401 challenge's resource_metadata points MCP clients.
  const resourceMetadataUrl = getOAuthProtectedResourceMetadataUrl(serverUrl);
  app.use(
    new URL(resourceMetadataUrl).pathname,
    metadataHandler({
      resource: serverUrl.href,
      scopes_supported: ["mcp:tools:call", "mcp:read", "mcp:write"],
      bearer_methods_supported: ["header"],
      resource_name: "Crash insights",
    }),
  );

  const auth = requireBearerAuth({
    verifier,
    requiredScopes: ["mcp:tools:call"],
    resourceMetadataUrl,
  });

  app.post(serverUrl.pathname, auth, handleMcpRequest);
  // Stateless: no server-to-client stream, no session to delete.
  const notAllowed = (_req: Request, res: Response) => {
    res.status(405).json({ jsonrpc: "2.0", error: { code: -32000, message: "Method not allowed." }, id: null });
  };
  app.get(serverUrl.pathname, auth, notAllowed);
  app.delete(serverUrl.pathname, auth, notAllowed);
  return app;
}

async function main(): Promise<void> {
  const port = Number(process.env.PORT ?? 3000);
  const serverUrl = new URL(process.env.MCP_SERVER_URL ?? `http://localhost:${port}/mcp`);
  const addr = process.env.SERVICE_ACCOUNTS_ADDR?.trim() || "http://localhost:50051";
  const verifier = serviceAccountTokenVerifier({
    baseUrl: /^https?:\/\//.test(addr) ? addr : `http://${addr}`,
  });
  const app = createApp({ verifier, serverUrl });
  const http = app.listen(port, "127.0.0.1", () => {
    console.log(`MCP server on ${serverUrl.href} (listening on 127.0.0.1:${port})`);
  });
  const stop = () => {
    http.close();
    verifier.close();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
