// A caller-side cache of `TokenIntrospection.Introspect` answers, kept coherent by
// `TokenIntrospection.WatchChanges` (opt-in; the contract is the repository's docs/caching.md, and
// the Rust client's crates/client/src/cache.rs is the same design).
//
//   import { createCachingIntrospector } from "@embrace/service-accounts-client";
//
//   const introspector = createCachingIntrospector({ baseUrl: "http://localhost:50051" });
//   const res = await introspector.introspect({ token, orgId: "acme", appId: "checkout-ios",
//     requiredScopes: ["mcp:read"], clientIp: "203.0.113.7" });
//   if (!res.allowed) { ... }            // the same IntrospectResponse as Introspect's
//   introspector.close();
//
// - Answers are cached only while the feed is up, and the feed runs on the same transport (one
//   HTTP/2 connection, one replica) as the `Introspect` calls. With `baseUrl` the introspector
//   owns the connection and also notices when a call goes out on another connection than the
//   feed's (a reconnect, a GOAWAY): the feed then counts as down until a new one, on the current
//   connection, has sent its `reset`.
// - Every answer remembers the feed's epoch read before its call was sent; a reset, or an
//   invalidation of its account, that arrived later makes it a miss. So an answer that was in
//   flight across an invalidation is never served. An answer whose call began while the feed was
//   in another state (down, or another stream) is not cached at all.
// - A cached token is decided here by the control plane's own rules (`evaluate` in
//   crates/domain/src/introspection/mod.rs): its expiry, networks, org, apps and scopes are
//   checked on every use, exactly as the server would. Malformed tokens are decided here by the
//   server's format and checksum check, without a call.
// - Nothing is served when nothing has arrived on the feed for `maxStalenessMs`: then every call
//   goes to the control plane, and fails (throws) when that cannot answer.
//
// Only SHA-256 hashes of tokens are kept, never a token.

import { createHash } from "node:crypto";
import { BlockList, isIPv4, isIPv6, SocketAddress } from "node:net";
import type { ClientHttp2Stream } from "node:http2";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { AppAccessSchema } from "./gen/embrace/serviceaccounts/v1/resources_pb.js";
import {
  DenialReason,
  InactiveReason,
  IntrospectResponseSchema,
  TokenIntrospection,
  type IntrospectResponse,
} from "./gen/embrace/serviceaccounts/v1/token_introspection_pb.js";

/** TLS for the connection to the control plane (Node's `tls.connect` options of the same names). */
export interface ServiceAccountTlsOptions {
  /** PEM CA certificates to trust instead of Node's default roots. */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** PEM client certificate chain, for mTLS (`--tls-client-ca` on the server). */
  cert?: string | Uint8Array;
  /** PEM private key of `cert`. */
  key?: string | Uint8Array;
  /** The server name to verify the certificate against, when it differs from `baseUrl`'s host. */
  servername?: string;
}

/** @internal Node's `tls.connect` options from `ServiceAccountTlsOptions`. */
export function nodeTls(tls: ServiceAccountTlsOptions) {
  const pem = (v: string | Uint8Array) => (typeof v === "string" ? v : Buffer.from(v));
  const { ca, cert, key, servername } = tls;
  return {
    ...(ca !== undefined ? { ca: Array.isArray(ca) ? ca.map(pem) : pem(ca) } : {}),
    ...(cert !== undefined ? { cert: pem(cert) } : {}),
    ...(key !== undefined ? { key: pem(key) } : {}),
    ...(servername !== undefined ? { servername } : {}),
  };
}

// ---- the token format (crates/domain/src/token.rs) ------------------------------------------

const PREFIX = "emb_sa_";
const LENGTH = 50;
const BODY_LENGTH = PREFIX.length + 37;

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) {
      c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    table[n] = c >>> 0;
  }
  return table;
})();

/** @internal CRC-32 (IEEE, as `crc32fast`) of the low bytes of `text`'s characters. */
export function crc32(text: string): number {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) {
    crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff]! ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** @internal The 6-character checksum the server appends to a token's first 44 characters. */
export function tokenChecksum(body: string): string {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32BE(crc32(body));
  return bytes.toString("base64url");
}

const TOKEN_SHAPE = /^emb_sa_[A-Za-z0-9_-]{43}$/;

/**
 * Whether `token` has the shape of a service-account token: `emb_sa_`, 37 random characters and
 * a CRC-32 checksum of the first 44, 50 characters of the URL-safe base64 alphabet in all. The
 * control plane answers `INACTIVE_REASON_MALFORMED` for anything else, without a lookup; this is
 * the same check.
 */
export function isWellFormedServiceAccountToken(token: string): boolean {
  return (
    token.length === LENGTH &&
    TOKEN_SHAPE.test(token) &&
    tokenChecksum(token.slice(0, BODY_LENGTH)) === token.slice(BODY_LENGTH)
  );
}

// ---- the checks of a request (Checks::parse on the server) ----------------------------------

/** The scopes of the control plane's catalogue as of this release; answers add any others. */
const CATALOGUE = ["mcp:tools:call", "mcp:read", "mcp:write"];

// OrgId: 1-128 characters, none of them white space (Rust's `char::is_whitespace`) or control.
const ORG_ID =
  /^[^\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\p{Cc}]{1,128}$/u;
const APP_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A client address, canonical: an IPv4-mapped IPv6 address is its IPv4 address. */
interface ClientIp {
  address: string;
  family: "ipv4" | "ipv6";
}

interface Checks {
  orgId: string | undefined;
  appId: string | undefined;
  requiredScopes: readonly string[];
  clientIp: ClientIp | undefined;
}

const MAPPED = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/;

/** The server's `parse_client_ip`; `undefined` for text it refuses (or might). */
function parseClientIp(text: string): ClientIp | undefined {
  if (isIPv4(text)) {
    return { address: text, family: "ipv4" };
  }
  // Node accepts a zone (`fe80::1%eth0`); the server does not.
  if (!isIPv6(text) || text.includes("%")) {
    return undefined;
  }
  const canonical = new SocketAddress({ address: text, family: "ipv6" }).address;
  const mapped = MAPPED.exec(canonical);
  if (mapped) {
    return { address: mapped[1]!, family: "ipv4" };
  }
  if (canonical.toLowerCase().startsWith("::ffff:") && !canonical.slice(7).includes(":")) {
    return undefined; // a mapped address Node wrote in a form this does not read
  }
  return { address: canonical, family: "ipv6" };
}

/** What the introspector is asked: `IntrospectRequest`'s fields. */
export interface CachingIntrospectRequest {
  /** The bearer token exactly as received. */
  token: string;
  /** The org the caller acts in (required with `appId`). */
  orgId?: string;
  /** The app the caller is about to act on. */
  appId?: string;
  /** Scopes the request needs. */
  requiredScopes?: readonly string[];
  /** The end client's address, IPv4 or IPv6 text; required for tokens restricted to networks. */
  clientIp?: string;
}

// ---- cached answers -------------------------------------------------------------------------
//
// An entry is kept small: the cache holds up to `capacity` tokens (10,000 by default), so every
// word per entry counts. An active token is one object (the answer and the cache's bookkeeping
// together); what tokens can share (the account's data, the scope and app lists, org ids,
// networks) is shared through bounded tables; and an entry holds no number V8 would box (a
// double, Infinity) unless its token needs one.

/** What an answer says about the token's account. Immutable, and shared by the entries of the
 * account's tokens while the control plane reports the same. */
interface AccountRecord {
  orgId: string;
  /** Packed (`packUuid`). */
  serviceAccountId: string;
  displayName: string;
  allApps: boolean;
  /** Sorted. */
  appIds: readonly string[];
  /** The slot of the account's invalidation epoch (kept here, not on each entry). */
  slot: number;
}

/** The networks a restricted token may be used from. Immutable, and shared between tokens with
 * the same list. */
interface Networks {
  /** As the server wrote them; never empty. */
  cidrs: readonly string[];
  /** The same networks by family: a restricted token always has a list for each family, and an
   * empty one allows nothing. */
  v4: BlockList;
  v6: BlockList;
}

/** An active token's answer, as the server reported it; decided here for each request. */
interface ActiveEntry {
  /** The feed's epoch when the call that filled it was sent. */
  filled: number;
  account: AccountRecord;
  /** Packed (`packUuid`). */
  tokenId: string;
  /** Sorted, shared between entries with the same scopes. */
  scopes: readonly string[];
  /** As the server wrote it (`google.protobuf.Timestamp`'s fields); `undefined` when the token
   * does not expire. */
  expireTime: { seconds: bigint; nanos: number } | undefined;
  /** `undefined` when the token is usable from anywhere. */
  networks: Networks | undefined;
}

/** An inactive token's answer: revoked or expired (final: it never works again), or unknown or of
 * a disabled account (brief: reused for `BRIEF_MS` only). */
interface InactiveEntry {
  filled: number;
  account: undefined;
  reason: InactiveReason;
  /** `performance.now()` past which it is not served; Infinity for a final answer. */
  until: number;
}

type Entry = ActiveEntry | InactiveEntry;

/** How long answers not known to be final (unknown token, disabled account) may be reused: they
 * name no account an invalidation could name. */
const BRIEF_MS = 1000;

/** Slots of the per-account invalidation epochs (a hash of the account id picks one; two
 * accounts sharing a slot only cost extra misses). */
const SLOTS = 4096;

/** Distinct values each sharing table keeps; past it, values are simply not shared. */
const SHARED_MAX = 1024;

/** A ticket for caching the answer of one call (see `CallerCache.begin`). */
interface Ticket {
  epoch: number;
  generation: number;
}

function slotOf(serviceAccountId: string): number {
  // FNV-1a.
  let h = 0x811c9dc5;
  for (let i = 0; i < serviceAccountId.length; i++) {
    h = Math.imul(h ^ serviceAccountId.charCodeAt(i), 0x01000193);
  }
  return (h >>> 0) % SLOTS;
}

/** Milliseconds since the epoch of a token's expiry. */
function expireMsOf(expireTime: { seconds: bigint; nanos: number }): number {
  return Number(expireTime.seconds) * 1000 + expireTime.nanos / 1e6;
}

/** The one empty list (no apps listed: all apps, or none), so that no account holds its own. */
const EMPTY: readonly string[] = Object.freeze([]);

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A UUID as `UUID` reads it, kept as its 16 bytes in a 16-character string: 32 bytes of heap
 * instead of 56. */
function packUuid(uuid: string): string {
  return Buffer.from(uuid.replaceAll("-", ""), "hex").toString("latin1");
}

/** The UUID `packUuid` packed, as the server wrote it (lowercase, hyphenated). */
function unpackUuid(packed: string): string {
  const hex = Buffer.from(packed, "latin1").toString("hex");
  const part = (from: number, to?: number) => hex.slice(from, to);
  return `${part(0, 8)}-${part(8, 12)}-${part(12, 16)}-${part(16, 20)}-${part(20)}`;
}

/** The cache itself, without the network: filled by `insert`, emptied by the feed. */
class CallerCache {
  readonly capacity: number;
  readonly maxStalenessMs: number;
  /** Keyed by the token's SHA-256 digest as a 32-character binary string (the most compact key). */
  private readonly entries = new Map<string, Entry>();
  /** Bumped by every message that drops answers. */
  private epoch = 1;
  /** The epoch of the last reset: older entries are misses. */
  private resetAt = 0;
  private readonly invalidated = new Float64Array(SLOTS);
  private up = false;
  /** Bumped whenever the feed goes down or up: an answer whose call began under another
   * generation is not cached. */
  private generation = 0;
  private lastHeard = -Infinity;
  /** Scopes known to the control plane: the catalogue and every scope an answer carried. */
  private readonly knownScopes = new Set(CATALOGUE);
  /** One array per distinct scope set, shared by the entries. */
  private readonly scopeSets = new Map<string, readonly string[]>();
  /** One array per distinct list of apps, shared by the accounts. */
  private readonly appSets = new Map<string, readonly string[]>();
  /** One string per distinct org id (each answer brings its own copy). */
  private readonly orgIds = new Map<string, string>();
  /** One `Networks` per distinct list of networks, shared by the entries. */
  private readonly networkSets = new Map<string, Networks>();
  /** The latest account data seen per account (by packed id), shared by the entries that match
   * it. */
  private readonly accounts = new Map<string, AccountRecord>();

  constructor(capacity: number, maxStalenessMs: number) {
    this.capacity = capacity;
    this.maxStalenessMs = maxStalenessMs;
  }

  get size(): number {
    return this.entries.size;
  }

  get feedUp(): boolean {
    return this.up;
  }

  /** The feed is up and spoke within the staleness bound. */
  usable(): boolean {
    return this.up && performance.now() - this.lastHeard < this.maxStalenessMs;
  }

  get(key: string): Entry | undefined {
    if (!this.usable()) {
      return undefined;
    }
    const entry = this.entries.get(key);
    if (!entry || entry.filled < this.resetAt) {
      return undefined;
    }
    if (entry.account !== undefined) {
      if (entry.filled < this.invalidated[entry.account.slot]!) {
        return undefined;
      }
    } else if (performance.now() >= entry.until) {
      return undefined;
    }
    // Most recently used last: the first key is the one to evict.
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry;
  }

  /** Call before sending `Introspect`; `undefined` when the answer must not be cached. */
  begin(): Ticket | undefined {
    return this.usable() ? { epoch: this.epoch, generation: this.generation } : undefined;
  }

  /** Caches what the control plane answered, if it may be (see the module's comment). */
  insert(key: string, response: IntrospectResponse, ticket: Ticket): void {
    if (ticket.generation !== this.generation || !this.up) {
      return;
    }
    const entry = this.entryOf(response, ticket.epoch);
    if (!entry) {
      return;
    }
    this.entries.delete(key);
    this.entries.set(key, entry);
    while (this.entries.size > this.capacity) {
      this.entries.delete(this.entries.keys().next().value!);
    }
  }

  heard(): void {
    this.lastHeard = performance.now();
  }

  reset(): void {
    this.epoch += 1;
    this.resetAt = this.epoch;
    this.entries.clear();
  }

  invalidate(serviceAccountId: string): void {
    if (!UUID.test(serviceAccountId)) {
      // Not an account this version can read: drop everything.
      this.reset();
      return;
    }
    this.epoch += 1;
    this.invalidated[slotOf(serviceAccountId)] = this.epoch;
  }

  setUp(up: boolean): void {
    this.generation += 1;
    this.up = up;
  }

  clear(): void {
    this.entries.clear();
    this.accounts.clear();
  }

  /** The request's checks, if the control plane would accept them; `undefined` when it must
   * judge them (it refuses them, and says why). */
  checks(request: CachingIntrospectRequest): Checks | undefined {
    const orgId = request.orgId || undefined;
    const appId = request.appId || undefined;
    if (appId !== undefined && (orgId === undefined || !APP_ID.test(appId))) {
      return undefined;
    }
    if (orgId !== undefined && !ORG_ID.test(orgId)) {
      return undefined;
    }
    const requiredScopes = request.requiredScopes ?? [];
    for (const scope of requiredScopes) {
      if (!this.knownScopes.has(scope)) {
        return undefined;
      }
    }
    let clientIp: ClientIp | undefined;
    if (request.clientIp) {
      clientIp = parseClientIp(request.clientIp);
      if (!clientIp) {
        return undefined;
      }
    }
    return { orgId, appId, requiredScopes, clientIp };
  }

  /** The cacheable reading of an answer; `undefined` when it cannot be read as one (a field
   * this version does not understand), and then nothing is cached. */
  private entryOf(response: IntrospectResponse, filled: number): Entry | undefined {
    if (!response.active) {
      switch (response.inactiveReason) {
        case InactiveReason.REVOKED:
        case InactiveReason.EXPIRED:
          return inactiveEntry(response.inactiveReason, filled, Infinity);
        case InactiveReason.UNKNOWN:
        case InactiveReason.ACCOUNT_DISABLED:
          return inactiveEntry(response.inactiveReason, filled, performance.now() + BRIEF_MS);
        default:
          return undefined;
      }
    }
    return this.activeEntryOf(response, filled);
  }

  private activeEntryOf(res: IntrospectResponse, filled: number): ActiveEntry | undefined {
    if (
      !ORG_ID.test(res.orgId) ||
      !UUID.test(res.serviceAccountId) ||
      !UUID.test(res.tokenId) ||
      res.scopes.length === 0 ||
      !res.appAccess
    ) {
      return undefined;
    }
    let expireTime: ActiveEntry["expireTime"];
    if (res.expireTime) {
      expireTime = { seconds: res.expireTime.seconds, nanos: res.expireTime.nanos };
      if (!Number.isFinite(expireMsOf(expireTime))) {
        return undefined;
      }
    }
    let networks: Networks | undefined;
    if (res.allowedCidrs.length > 0) {
      networks = this.networks(res.allowedCidrs);
      if (!networks) {
        return undefined;
      }
    }
    for (const scope of res.scopes) {
      this.knownScopes.add(scope);
    }
    return {
      filled,
      account: this.account(res),
      tokenId: packUuid(res.tokenId),
      scopes: shared(this.scopeSets, res.scopes),
      expireTime,
      networks,
    };
  }

  private account(res: IntrospectResponse): AccountRecord {
    const allApps = res.appAccess?.allApps ?? false;
    const appIds = allApps ? EMPTY : shared(this.appSets, res.appAccess?.appIds ?? []);
    const serviceAccountId = packUuid(res.serviceAccountId);
    const known = this.accounts.get(serviceAccountId);
    if (
      known &&
      known.orgId === res.orgId &&
      known.displayName === res.serviceAccountDisplayName &&
      known.allApps === allApps &&
      known.appIds.length === appIds.length &&
      known.appIds.every((id, i) => id === appIds[i])
    ) {
      return known;
    }
    let orgId = this.orgIds.get(res.orgId);
    if (orgId === undefined) {
      orgId = res.orgId;
      if (this.orgIds.size < SHARED_MAX) {
        this.orgIds.set(orgId, orgId);
      }
    }
    const account: AccountRecord = Object.freeze({
      orgId,
      serviceAccountId,
      displayName: res.serviceAccountDisplayName,
      allApps,
      appIds,
      slot: slotOf(res.serviceAccountId),
    });
    // Bounded like the entries; dropping one only costs sharing.
    if (!known && this.accounts.size >= this.capacity) {
      this.accounts.delete(this.accounts.keys().next().value!);
    }
    this.accounts.set(serviceAccountId, account);
    return account;
  }

  /** The networks of a restricted token, shared; `undefined` when one cannot be read. */
  private networks(cidrs: readonly string[]): Networks | undefined {
    const key = JSON.stringify(cidrs);
    const known = this.networkSets.get(key);
    if (known) {
      return known;
    }
    const v4 = new BlockList();
    const v6 = new BlockList();
    for (const cidr of cidrs) {
      // The server writes every network as `address/prefix`.
      const slash = cidr.indexOf("/");
      if (slash < 0 || !/^\d{1,3}$/.test(cidr.slice(slash + 1))) {
        return undefined;
      }
      const address = cidr.slice(0, slash);
      const prefix = Number(cidr.slice(slash + 1));
      try {
        if (isIPv4(address)) {
          v4.addSubnet(address, prefix, "ipv4");
        } else if (isIPv6(address) && !address.includes("%")) {
          v6.addSubnet(address, prefix, "ipv6");
        } else {
          return undefined;
        }
      } catch {
        return undefined;
      }
    }
    // Never changed once built, so tokens can share them.
    const networks: Networks = Object.freeze({ cidrs: Object.freeze([...cidrs]), v4, v6 });
    if (this.networkSets.size < SHARED_MAX) {
      this.networkSets.set(key, networks);
    }
    return networks;
  }
}

/** `list` as one frozen array shared through `table` (up to `SHARED_MAX` distinct lists; past
 * that, a copy of its own). */
function shared(table: Map<string, readonly string[]>, list: readonly string[]): readonly string[] {
  if (list.length === 0) {
    return EMPTY;
  }
  const key = JSON.stringify(list);
  let known = table.get(key);
  if (!known) {
    known = Object.freeze([...list]);
    if (table.size < SHARED_MAX) {
      table.set(key, known);
    }
  }
  return known;
}

function inactiveEntry(reason: InactiveReason, filled: number, until: number): InactiveEntry {
  return { filled, account: undefined, reason, until };
}

/** The answer for an inactive token, as the server writes it. */
function inactive(reason: InactiveReason): IntrospectResponse {
  return create(IntrospectResponseSchema, {
    active: false,
    inactiveReason: reason,
    allowed: false,
    denialReason: DenialReason.TOKEN_INACTIVE,
    denialReasons: [DenialReason.TOKEN_INACTIVE],
  });
}

/** A cached answer applied to `checks` by the control plane's rules (`evaluate`). */
function decide(entry: Entry, checks: Checks, nowMs: number): IntrospectResponse {
  if (entry.account === undefined) {
    return inactive(entry.reason);
  }
  const { account, expireTime, networks, scopes } = entry;
  if (expireTime && expireMsOf(expireTime) <= nowMs) {
    return inactive(InactiveReason.EXPIRED);
  }
  const reasons: DenialReason[] = [];
  const orgMatches = checks.orgId === undefined || checks.orgId === account.orgId;
  if (!orgMatches) {
    reasons.push(DenialReason.ORG_MISMATCH);
  }
  if (!networksAllow(networks, checks.clientIp)) {
    reasons.push(DenialReason.CLIENT_IP_NOT_ALLOWED);
  }
  if (
    checks.appId !== undefined &&
    !(orgMatches && (account.allApps || account.appIds.includes(checks.appId)))
  ) {
    reasons.push(DenialReason.APP_NOT_GRANTED);
  }
  const missingScopes = checks.requiredScopes.filter((scope) => !scopes.includes(scope));
  if (missingScopes.length > 0) {
    reasons.push(DenialReason.SCOPE_MISSING);
  }
  return create(IntrospectResponseSchema, {
    active: true,
    orgId: account.orgId,
    serviceAccountId: unpackUuid(account.serviceAccountId),
    serviceAccountDisplayName: account.displayName,
    tokenId: unpackUuid(entry.tokenId),
    scopes: [...scopes],
    appAccess: create(AppAccessSchema, { allApps: account.allApps, appIds: [...account.appIds] }),
    ...(expireTime ? { expireTime: create(TimestampSchema, { ...expireTime }) } : {}),
    allowed: reasons.length === 0,
    denialReason: reasons[0] ?? DenialReason.UNSPECIFIED,
    missingScopes,
    denialReasons: reasons,
    allowedCidrs: networks ? [...networks.cidrs] : [],
  });
}

/** `AllowedCidrs::allows`: unrestricted, or the client is in one of the networks (IPv4 clients
 * in IPv4 networks, IPv6 clients in IPv6 networks, as the server compares them). */
function networksAllow(networks: Networks | undefined, client: ClientIp | undefined): boolean {
  if (!networks) {
    return true;
  }
  if (!client) {
    return false;
  }
  const list = client.family === "ipv4" ? networks.v4 : networks.v6;
  return list.check(client.address, client.family);
}

// ---- the introspector -----------------------------------------------------------------------

export interface CachingIntrospectorOptions {
  /**
   * The control plane's gRPC address, `http://host:port` or `https://host:port`. The
   * introspector opens one HTTP/2 connection (`@connectrpc/connect-node`) and runs both the feed
   * and the calls on it. Required unless `transport` is given.
   */
  baseUrl?: string;
  /** TLS options for an `https://` `baseUrl` (ignored with `transport`). */
  tls?: ServiceAccountTlsOptions;
  /**
   * A Connect transport to use instead of `baseUrl`. The feed and the calls must reach the same
   * replica: give a `createGrpcTransport(...)` (one `Http2SessionManager`, one connection at a
   * time), not a transport that spreads calls over connections.
   */
  transport?: Transport;
  /** Tokens kept, least recently used dropped first. Default 10,000. */
  capacity?: number;
  /**
   * Past this long without a message on the feed (the server sends a heartbeat every second by
   * default), nothing is served from the cache: every call goes to the control plane, and fails
   * closed if it cannot answer. Default 5000.
   */
  maxStalenessMs?: number;
  /** Deadline of each `Introspect` call, in milliseconds. Default 2000. */
  timeoutMs?: number;
}

/** How the cache has been doing, for logs and tests. */
export interface CachingIntrospectorStats {
  /** Tokens cached now. */
  size: number;
  /** Answers decided from the cache. */
  hits: number;
  /** Answers that came from `Introspect`. */
  misses: number;
  /** Malformed tokens decided here, without a call. */
  malformed: number;
  /** `reset`s received (the first message of every feed stream is one). */
  resets: number;
  /** Invalidations received. */
  invalidations: number;
  /** The feed has sent its `reset` and has not ended since. */
  feedUp: boolean;
  /** Answers are served from the cache now (the feed is up and spoke within `maxStalenessMs`). */
  serving: boolean;
}

export interface CachingIntrospector {
  /**
   * The answer `Introspect` would give now: from the cache when it may be used, otherwise from
   * the control plane (which is then cached when allowed). Throws the `ConnectError` of a failed
   * call: never an answer that was not the control plane's or decided by its rules.
   */
  introspect(
    request: CachingIntrospectRequest,
    options?: { timeoutMs?: number; signal?: AbortSignal },
  ): Promise<IntrospectResponse>;
  stats(): CachingIntrospectorStats;
  /**
   * Stops the feed, empties the cache and closes the connection the introspector opened (not a
   * given `transport`). Until then the feed's open stream keeps Node's event loop alive.
   */
  close(): void;
}

const WATCH_PATH = "/embrace.serviceaccounts.v1.TokenIntrospection/WatchChanges";

/**
 * A caching `Introspect`: answers are cached only while the `WatchChanges` feed on the same
 * connection is up, and every invalidation, reset or silence of the feed is honoured as
 * docs/caching.md requires.
 */
export function createCachingIntrospector(options: CachingIntrospectorOptions): CachingIntrospector {
  const { baseUrl, tls, transport } = options;
  const capacity = options.capacity ?? 10_000;
  const maxStalenessMs = options.maxStalenessMs ?? 5000;
  const timeoutMs = options.timeoutMs ?? 2000;
  if (!transport && !baseUrl) {
    throw new TypeError("createCachingIntrospector: baseUrl or transport is required");
  }
  if (!(Number.isInteger(capacity) && capacity >= 1)) {
    throw new RangeError("createCachingIntrospector: capacity must be a whole number >= 1");
  }
  if (!(maxStalenessMs > 0) || !(timeoutMs > 0)) {
    throw new RangeError("createCachingIntrospector: maxStalenessMs and timeoutMs must be > 0");
  }

  const cache = new CallerCache(capacity, maxStalenessMs);
  const counts = { hits: 0, misses: 0, malformed: 0, resets: 0, invalidations: 0 };
  let closed = false;
  let closeSession: (() => void) | undefined;
  /** Aborts the current feed stream. */
  let feedAbort: AbortController | undefined;
  /** With our own connection: the HTTP/2 session the current feed stream runs on. */
  let feedSession: object | undefined;

  // A call went out on another connection than the feed's (the session manager reconnected, or
  // the feed's connection is shutting down): what the feed says no longer covers the answers.
  const onStream = (path: string, session: object | undefined) => {
    if (path === WATCH_PATH) {
      feedSession = session;
    } else if (feedSession !== undefined && session !== feedSession) {
      feedSession = undefined;
      if (cache.feedUp) {
        cache.setUp(false);
      }
      feedAbort?.abort();
    }
  };

  const client: Promise<Client<typeof TokenIntrospection>> = (async () => {
    if (transport) {
      return createClient(TokenIntrospection, transport);
    }
    const node = await import("@connectrpc/connect-node");
    type Request = InstanceType<typeof node.Http2SessionManager>["request"];
    class TrackedSessionManager extends node.Http2SessionManager {
      override async request(...args: Parameters<Request>): Promise<ClientHttp2Stream> {
        const stream = await super.request(...args);
        onStream(args[1], stream.session);
        return stream;
      }
    }
    const session = new TrackedSessionManager(baseUrl!, undefined, tls && nodeTls(tls));
    closeSession = () => session.abort();
    if (closed) {
      session.abort();
    }
    return createClient(
      TokenIntrospection,
      node.createGrpcTransport({ baseUrl: baseUrl!, sessionManager: session }),
    );
  })();
  client.catch(() => {});

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      setTimeout(resolve, ms).unref();
    });

  // Follows WatchChanges for as long as the introspector is open, reconnecting with backoff. Each
  // new stream starts from nothing (no resume token): its first message is a reset, which empties
  // the cache before it is used again.
  const follow = async () => {
    let backoff = 50;
    let watch: Client<typeof TokenIntrospection>;
    try {
      watch = await client;
    } catch {
      return;
    }
    while (!closed) {
      const abort = new AbortController();
      feedAbort = abort;
      // Silence for maxStalenessMs ends the stream: a half-open connection reports nothing.
      let silence = setTimeout(() => abort.abort(), maxStalenessMs);
      silence.unref();
      try {
        for await (const message of watch.watchChanges({}, { signal: abort.signal })) {
          clearTimeout(silence);
          silence = setTimeout(() => abort.abort(), maxStalenessMs);
          silence.unref();
          if (closed || abort.signal.aborted) {
            break;
          }
          backoff = 50;
          switch (message.event.case) {
            case "reset":
              counts.resets += 1;
              cache.reset();
              if (!cache.feedUp) {
                cache.setUp(true);
              }
              break;
            case "invalidation":
              counts.invalidations += 1;
              cache.invalidate(message.event.value.serviceAccountId);
              break;
            default:
              break;
          }
          cache.heard();
        }
      } catch {
        // Ended by the server, the connection or the silence: the same.
      } finally {
        clearTimeout(silence);
      }
      if (feedAbort === abort) {
        feedAbort = undefined;
      }
      feedSession = undefined;
      cache.setUp(false);
      if (closed) {
        return;
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 2000);
    }
  };
  void follow();

  return {
    async introspect(request, callOptions = {}) {
      const checks = cache.checks(request);
      const call = async () =>
        (await client).introspect(
          {
            token: request.token,
            orgId: request.orgId ?? "",
            appId: request.appId ?? "",
            requiredScopes: [...(request.requiredScopes ?? [])],
            clientIp: request.clientIp ?? "",
          },
          {
            timeoutMs: callOptions.timeoutMs ?? timeoutMs,
            ...(callOptions.signal ? { signal: callOptions.signal } : {}),
          },
        );
      if (!checks) {
        // The control plane refuses these checks (INVALID_ARGUMENT) and says why.
        counts.misses += 1;
        return call();
      }
      if (!isWellFormedServiceAccountToken(request.token)) {
        counts.malformed += 1;
        return inactive(InactiveReason.MALFORMED);
      }
      const key = createHash("sha256").update(request.token).digest("binary");
      const entry = cache.get(key);
      if (entry) {
        counts.hits += 1;
        return decide(entry, checks, Date.now());
      }
      const ticket = cache.begin();
      counts.misses += 1;
      const response = await call();
      if (ticket) {
        cache.insert(key, response, ticket);
      }
      return response;
    },
    stats() {
      return {
        size: cache.size,
        ...counts,
        feedUp: cache.feedUp,
        serving: cache.usable(),
      };
    },
    close() {
      if (closed) {
        return;
      }
      closed = true;
      feedAbort?.abort();
      cache.setUp(false);
      cache.clear();
      closeSession?.();
    },
  };
}
