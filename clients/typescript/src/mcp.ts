// Service-account tokens for MCP servers built with the official TypeScript SDK
// (`@modelcontextprotocol/sdk`): a token verifier for its `requireBearerAuth` middleware, and
// helpers that tool handlers call to require scopes and apps.
//
//   import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
//   import { requireApp, requireScopes, serviceAccountTokenVerifier } from "@embrace/service-accounts-client";
//
//   const verifier = serviceAccountTokenVerifier({ baseUrl: "http://localhost:50051" });
//   app.post("/mcp", requireBearerAuth({ verifier, requiredScopes: ["mcp:tools:call"] }), ...);
//
//   server.registerTool("get_crash_summary", { inputSchema: { app_id: z.string() } },
//     async ({ app_id }, { authInfo }) => {
//       const identity = requireScopes(authInfo, "mcp:read");
//       requireApp(authInfo, app_id);
//       ...
//     });
//
// The SDK and `@connectrpc/connect-node` are optional peer dependencies: this module loads them
// only when a verifier is created, so that applications that do not serve MCP need neither. The
// types below are structural copies of the SDK's `AuthInfo` and `OAuthTokenVerifier`, so the
// package's declarations do not depend on the SDK either; values of these types are accepted
// wherever the SDK's are.

import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import {
  createCachingIntrospector,
  nodeTls,
  type CachingIntrospector,
  type ServiceAccountTlsOptions,
} from "./cache.js";
import {
  TokenIntrospection,
  type IntrospectResponse,
} from "./gen/embrace/serviceaccounts/v1/token_introspection_pb.js";

/** The prefix of every service-account token. */
export const SERVICE_ACCOUNT_TOKEN_PREFIX = "emb_sa_";

/**
 * What the SDK's `requireBearerAuth` stores in `req.auth` and passes to tool handlers as
 * `extra.authInfo` (the SDK's `AuthInfo`, from `@modelcontextprotocol/sdk/server/auth/types.js`).
 */
export interface McpAuthInfo {
  token: string;
  clientId: string;
  scopes: string[];
  /** Seconds since the epoch. */
  expiresAt?: number;
  resource?: URL;
  extra?: Record<string, unknown>;
}

/** The SDK's `OAuthTokenVerifier` (`@modelcontextprotocol/sdk/server/auth/provider.js`). */
export interface McpTokenVerifier {
  verifyAccessToken(token: string): Promise<McpAuthInfo>;
}

/** The apps a service account may act on, within its org. */
export type ServiceAccountAppAccess = { allApps: true } | { appIds: string[] };

/**
 * Who called: the identity behind a service-account token, as the control plane reported it.
 * Also the members of `AuthInfo.extra` for a service-account token.
 */
export interface ServiceAccountIdentity {
  /** The org that owns the account: the org every tool call acts in. */
  orgId: string;
  serviceAccountId: string;
  /** The account's display name, for logs such as "service account 'CI Pipeline' did X". */
  serviceAccountName: string;
  /** The token's id (its non-secret handle). */
  tokenId: string;
  /** The token's scopes, sorted. */
  scopes: string[];
  appAccess: ServiceAccountAppAccess;
  /** When the token expires, if it does. */
  expireTime?: Date;
}

export interface ServiceAccountTokenVerifierOptions {
  /**
   * The control plane's gRPC address, `http://host:port` or `https://host:port`. Used with
   * `@connectrpc/connect-node`'s `createGrpcTransport`; required unless `transport` is given.
   */
  baseUrl?: string;
  /** TLS options for an `https://` `baseUrl` (ignored with `transport`). */
  tls?: ServiceAccountTlsOptions;
  /**
   * A Connect transport to the control plane to use instead of `baseUrl`, e.g. a
   * `createGrpcTransport(...)` with interceptors or a shared `Http2SessionManager`. With `cache`,
   * the change feed runs on it too, so it must reach one replica over one connection at a time
   * (as `createGrpcTransport` does).
   */
  transport?: Transport;
  /** Deadline of each `Introspect` call, in milliseconds. Default 2000. */
  timeoutMs?: number;
  /**
   * Verifier for tokens that do not start with `emb_sa_` (the server's own OAuth verifier).
   * Without it such tokens are refused as invalid.
   */
  fallback?: McpTokenVerifier;
  /**
   * `AuthInfo.expiresAt` of a token that never expires: this many seconds from now. Default 60,
   * and never more than the cache's bound (`cache.maxStalenessMs`, in whole seconds) when the
   * cache is on. The SDK's `requireBearerAuth` refuses an `AuthInfo` without `expiresAt`; every
   * request is verified again, so the horizon never keeps a revoked token alive.
   */
  expiryHorizonSeconds?: number;
  /**
   * Opt-in: decide tokens from a cache kept coherent by the control plane's change feed
   * (`createCachingIntrospector`, on the same connection) instead of calling `Introspect` for
   * every request. A revocation or any other change reaches the cache as soon as the feed
   * delivers it; past `maxStalenessMs` without a word from the feed, every request is
   * introspected again (and fails with a server error if the control plane does not answer).
   * Off by default.
   */
  cache?: {
    /** Tokens kept. Default 10,000. */
    capacity?: number;
    /** Default 5000; at least 1000 (`expiresAt` is in whole seconds). */
    maxStalenessMs?: number;
  };
  /**
   * Reported as `AuthInfo.resource` for service-account tokens. Set it to the same URL as
   * `requireBearerAuth`'s `expectedResource` when that is set for the server's own OAuth tokens:
   * service-account tokens carry no audience, and the control plane is the authority for them.
   */
  resource?: URL;
}

/** `serviceAccountTokenVerifier`'s result: an `OAuthTokenVerifier` that can be closed. */
export interface ServiceAccountTokenVerifier extends McpTokenVerifier {
  /**
   * Stops the cache's change feed, if any, and closes the connection to the control plane that
   * the verifier opened (not a given `transport`).
   */
  close(): void;
}

/**
 * Refusal by `requireScopes` or `requireApp`. Thrown inside an `McpServer` tool, the MCP client
 * receives a tool result with `isError: true` whose text is `message`; thrown in a plain
 * `Server` request handler, a JSON-RPC error with `code` (-32600, invalid request), `message` and
 * `data`.
 */
export class ServiceAccountAccessError extends Error {
  /** JSON-RPC error code: -32600 (the SDK's `ErrorCode.InvalidRequest`). */
  readonly code = -32600;
  /** The scopes the token lacks (`requireScopes`). */
  readonly missingScopes: string[];
  /** The app the account has no access to (`requireApp`). */
  readonly appId: string | undefined;
  /** What the client receives as the JSON-RPC error's `data`. */
  readonly data: { missingScopes?: string[]; appId?: string };

  constructor(message: string, refused: { missingScopes?: string[]; appId?: string } = {}) {
    super(message);
    this.name = "ServiceAccountAccessError";
    this.missingScopes = refused.missingScopes ?? [];
    this.appId = refused.appId;
    this.data = { ...refused };
  }
}

// The brand of an AuthInfo made by this module's verifier: a fallback verifier cannot forge it by
// putting look-alike members into `extra`.
const IDENTITY = Symbol("embrace.serviceaccounts.identity");

/**
 * The service-account identity of an `AuthInfo` made by `serviceAccountTokenVerifier`, or
 * `undefined` for any other (a token the fallback verified, or none).
 */
export function serviceAccountIdentity(
  authInfo: McpAuthInfo | undefined,
): ServiceAccountIdentity | undefined {
  const identity = authInfo?.extra?.[IDENTITY as unknown as string];
  return isIdentity(identity) ? identity : undefined;
}

// Every identity the verifier made, and nothing else.
const MADE = new WeakSet<object>();

function isIdentity(value: unknown): value is ServiceAccountIdentity {
  return typeof value === "object" && value !== null && MADE.has(value);
}

function identityOrRefuse(authInfo: McpAuthInfo | undefined): ServiceAccountIdentity {
  const identity = serviceAccountIdentity(authInfo);
  if (!identity) {
    throw new ServiceAccountAccessError("this tool requires a service-account token");
  }
  return identity;
}

/**
 * Requires the caller's service-account token to carry every one of `scopes`; returns the
 * identity. Refuses (`ServiceAccountAccessError`) with `missing scope: mcp:write` (or
 * `missing scopes: a, b`), naming only the missing scopes, or when `authInfo` is not a
 * service-account token's.
 */
export function requireScopes(
  authInfo: McpAuthInfo | undefined,
  ...scopes: string[]
): ServiceAccountIdentity {
  const identity = identityOrRefuse(authInfo);
  const missing = [...new Set(scopes)].filter((scope) => !identity.scopes.includes(scope));
  if (missing.length > 0) {
    const noun = missing.length === 1 ? "scope" : "scopes";
    throw new ServiceAccountAccessError(`missing ${noun}: ${missing.join(", ")}`, {
      missingScopes: missing,
    });
  }
  return identity;
}

/**
 * Requires the caller's service account to have access to `appId` in its org (the org every
 * tool call acts in); returns the identity. An account with access to all apps has access to every
 * app of its org. Refuses (`ServiceAccountAccessError`) with `no access to app: <appId>`, or when
 * `authInfo` is not a service-account token's.
 */
export function requireApp(authInfo: McpAuthInfo | undefined, appId: string): ServiceAccountIdentity {
  const identity = identityOrRefuse(authInfo);
  const access = identity.appAccess;
  if (!("allApps" in access) && !access.appIds.includes(appId)) {
    throw new ServiceAccountAccessError(`no access to app: ${appId}`, { appId });
  }
  return identity;
}

type SdkErrors = typeof import("@modelcontextprotocol/sdk/server/auth/errors.js");

/**
 * An `OAuthTokenVerifier` for the MCP SDK's `requireBearerAuth` that asks the control plane's
 * `TokenIntrospection.Introspect` about every `emb_sa_` token.
 *
 * - active token → `AuthInfo` with `clientId` the service account id, the token's `scopes`,
 *   `expiresAt` (the token's expiry, or now + `expiryHorizonSeconds` for a token that never
 *   expires, at most the cache's staleness bound with `cache`) and the identity in `extra`;
 * - malformed, unknown, revoked, expired or disabled token → the SDK's `InvalidTokenError`
 *   (401 `invalid_token`);
 * - control plane unreachable or failing (UNAVAILABLE, DEADLINE_EXCEEDED, ...) → the SDK's
 *   `ServerError` (500 `server_error`): never allowed, never "invalid token";
 * - a token without the `emb_sa_` prefix → `fallback`, or `InvalidTokenError` without one.
 */
export function serviceAccountTokenVerifier(
  options: ServiceAccountTokenVerifierOptions,
): ServiceAccountTokenVerifier {
  const { baseUrl, tls, transport, fallback, resource } = options;
  const timeoutMs = options.timeoutMs ?? 2000;
  let horizon = options.expiryHorizonSeconds ?? 60;
  if (!transport && !baseUrl) {
    throw new TypeError("serviceAccountTokenVerifier: baseUrl or transport is required");
  }
  if (!(timeoutMs > 0) || !(horizon > 0)) {
    throw new RangeError("serviceAccountTokenVerifier: timeoutMs and expiryHorizonSeconds must be > 0");
  }
  let cached: CachingIntrospector | undefined;
  if (options.cache) {
    const maxStalenessMs = options.cache.maxStalenessMs ?? 5000;
    if (!(maxStalenessMs >= 1000)) {
      throw new RangeError("serviceAccountTokenVerifier: cache.maxStalenessMs must be >= 1000");
    }
    // A cached allow outlives a change by at most the staleness bound: so may the horizon.
    horizon = Math.min(horizon, Math.floor(maxStalenessMs / 1000));
    cached = createCachingIntrospector({
      ...(transport ? { transport } : { baseUrl: baseUrl!, ...(tls ? { tls } : {}) }),
      ...(options.cache.capacity !== undefined ? { capacity: options.cache.capacity } : {}),
      maxStalenessMs,
      timeoutMs,
    });
  }

  // Loaded now, awaited at the first token: the application that verifies tokens has the SDK.
  const sdk: Promise<SdkErrors> = import("@modelcontextprotocol/sdk/server/auth/errors.js");
  sdk.catch(() => {});
  let closeSession: (() => void) | undefined;
  let introspect: (token: string) => Promise<IntrospectResponse>;
  if (cached) {
    const introspector = cached;
    introspect = (token) => introspector.introspect({ token });
  } else {
    const client: Promise<Client<typeof TokenIntrospection>> = (async () => {
      if (transport) {
        return createClient(TokenIntrospection, transport);
      }
      const node = await import("@connectrpc/connect-node");
      const session = new node.Http2SessionManager(baseUrl!, undefined, tls && nodeTls(tls));
      closeSession = () => session.abort();
      return createClient(
        TokenIntrospection,
        node.createGrpcTransport({ baseUrl: baseUrl!, sessionManager: session }),
      );
    })();
    client.catch(() => {});
    introspect = async (token) => (await client).introspect({ token }, { timeoutMs });
  }

  return {
    async verifyAccessToken(token: string): Promise<McpAuthInfo> {
      if (!token.startsWith(SERVICE_ACCOUNT_TOKEN_PREFIX)) {
        if (fallback) {
          return fallback.verifyAccessToken(token);
        }
        const { InvalidTokenError } = await sdk;
        throw new InvalidTokenError("Not a service-account token");
      }
      const { InvalidTokenError, ServerError } = await sdk;
      let res;
      try {
        res = await introspect(token);
      } catch (err) {
        const connectErr = ConnectError.from(err);
        // A request the control plane refuses to read (e.g. an absurdly long token) is a bad
        // token; anything else is the control plane failing, which must not look like one.
        if (connectErr.code === Code.InvalidArgument) {
          throw new InvalidTokenError("Invalid token");
        }
        throw new ServerError(
          `Token introspection failed: ${Code[connectErr.code] ?? connectErr.code}`,
        );
      }
      if (!res.active) {
        throw new InvalidTokenError("Invalid token");
      }
      // `allowed` is false for an active token only when the token is restricted to networks:
      // no check was asked for, and this verifier does not see the client's address.
      if (!res.allowed) {
        throw new InvalidTokenError("Token not usable here");
      }
      const expireTime = res.expireTime
        ? new Date(Number(res.expireTime.seconds) * 1000 + Math.floor(res.expireTime.nanos / 1e6))
        : undefined;
      const appAccess: ServiceAccountAppAccess = res.appAccess?.allApps
        ? { allApps: true }
        : { appIds: Object.freeze([...(res.appAccess?.appIds ?? [])]) as string[] };
      const identity: ServiceAccountIdentity = Object.freeze({
        orgId: res.orgId,
        serviceAccountId: res.serviceAccountId,
        serviceAccountName: res.serviceAccountDisplayName,
        tokenId: res.tokenId,
        scopes: Object.freeze([...res.scopes]) as string[],
        appAccess: Object.freeze(appAccess),
        ...(expireTime ? { expireTime } : {}),
      });
      MADE.add(identity);
      const extra: Record<string, unknown> = { ...identity };
      // Enumerable, so that a copy of `extra` (`{ ...extra }`) keeps the brand.
      Object.defineProperty(extra, IDENTITY, { value: identity, enumerable: true });
      return {
        token,
        clientId: res.serviceAccountId,
        scopes: [...res.scopes],
        expiresAt: expireTime
          ? Math.floor(expireTime.getTime() / 1000)
          : Math.floor(Date.now() / 1000) + horizon,
        ...(resource ? { resource } : {}),
        extra,
      };
    },
    close(): void {
      cached?.close();
      closeSession?.();
    },
  };
}
