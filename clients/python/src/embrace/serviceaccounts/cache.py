"""A caller-side cache of `TokenIntrospection.Introspect` answers, kept coherent by
`WatchChanges` (opt-in; the contract is SPEC §21, the Rust client's `cache.rs` is the same
design).

`CachingIntrospector(channel)` answers `IntrospectRequest`s as the control plane would, from
answers it already has when it may, and calls `Introspect` on `channel` otherwise:

- Answers are cached only while the change feed is up, and the feed (`WatchChanges`) runs on the
  same channel, so the same connection and replica, as the `Introspect` calls. Each new feed
  stream starts with no resume token; its first message is a `reset`, which drops everything, and
  only then is the cache used. Every later `reset` drops everything again.
- Before each `Introspect` call the feed's epoch is read. Every `reset` and every invalidation
  bumps it; an invalidation records the new epoch against its service account, a reset as the
  last reset. An answer filled with epoch `e` is served only while `e` is at least both, so an
  answer that was in flight across an invalidation of its account, or a reset, is never served.
  Whenever the feed goes down or up a generation counter moves, and an answer whose call began
  under another generation is not cached at all.
- The key is the SHA-256 of the token: the token itself is never kept. Malformed tokens (prefix,
  length, alphabet, CRC32 checksum: the server's own check) are answered without a call.
- Active answers keep the token's identity (org, account, display name, token id, scopes, app
  access, `expire_time`, `allowed_cidrs`); each later request is decided here by the server's
  rules (expiry checked on every use, org, client address, app within the org, every missing
  scope, the denial reasons in the server's order). Revoked and expired answers are final;
  unknown and account-disabled answers are reused for at most 1 s (they name no account that an
  invalidation could name); nothing else is cached.
- When nothing has arrived on the feed for `max_staleness` seconds (the server sends a heartbeat
  every second), nothing is served from the cache: every request is sent to the control plane,
  and its failure is raised (fail closed).

One `CachingIntrospector` belongs to the event loop its channel was made in. Stop its feed with
`close()` (or `async with`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
import sys
import time
import weakref
import zlib
from collections import OrderedDict
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from grpc import aio

from embrace.serviceaccounts.v1 import token_introspection_pb2 as pb
from embrace.serviceaccounts.v1 import token_introspection_pb2_grpc as pb_grpc

__all__ = [
    "TOKEN_PREFIX",
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_STALENESS",
    "CachingIntrospector",
    "token_hash",
    "well_formed",
]

_log = logging.getLogger(__name__)

TOKEN_PREFIX = "emb_sa_"
DEFAULT_CAPACITY = 10_000
DEFAULT_MAX_STALENESS = 5.0
"""Seconds without a message on the feed after which the cache is not used."""
DEFAULT_TIMEOUT = 2.0
"""Seconds each `Introspect` call may take unless told otherwise."""

BRIEF = 1.0
"""How long answers not known to be final (unknown token, disabled account) may be reused."""

SLOTS = 4096
"""Slots of the per-account invalidation epochs (a hash of the account id picks one; two accounts
sharing a slot only cost extra misses)."""

SCOPE_CATALOGUE: FrozenSet[str] = frozenset({"mcp:tools:call", "mcp:read", "mcp:write"})
"""The scopes the control plane knows (its catalogue). A request requiring any other scope is
sent to the control plane, which refuses it (INVALID_ARGUMENT) or, if its catalogue grew, judges
it."""

# --- the token format (crates/domain/src/token.rs, `TokenSecret::check`) --------------------------

_LENGTH = 50
_BODY_LENGTH = 44  # the prefix and 37 random characters; then 6 characters of checksum
_PREFIX_BYTES = TOKEN_PREFIX.encode("ascii")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def token_hash(token: str) -> Optional[bytes]:
    """The SHA-256 of a well-formed token, or `None` when it is malformed.

    Well-formed as the control plane checks it: 50 bytes, `emb_sa_`, then only characters of the
    URL-safe base64 alphabet, the last 6 being the unpadded URL-safe base64 of the big-endian
    CRC32 of the first 44.
    """
    try:
        raw = token.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not a string the server could be sent
        return None
    if len(raw) != _LENGTH or not raw.startswith(_PREFIX_BYTES):
        return None
    if raw[len(_PREFIX_BYTES) :].translate(None, _ALPHABET):
        return None  # a character outside the alphabet
    body, tail = raw[:_BODY_LENGTH], raw[_BODY_LENGTH:]
    expected = base64.urlsafe_b64encode(zlib.crc32(body).to_bytes(4, "big"))[:6]
    if expected != tail:
        return None
    return hashlib.sha256(raw).digest()


def well_formed(token: str) -> bool:
    """Whether `token` passes the control plane's format and checksum check."""
    return token_hash(token) is not None


# --- requirements, as the server parses them (`Checks::parse`) -----------------------------------

_IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_IpNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _org_id_ok(org_id: str) -> bool:
    """`OrgId::parse`: 1-128 characters, none whitespace or a control character."""
    if not 0 < len(org_id) <= 128:
        return False
    if org_id.isascii():
        return all(" " < c < "\x7f" for c in org_id)
    return not any(c.isspace() or (c < " " or "\x7f" <= c <= "\x9f") for c in org_id)


def _client_ip(text: str) -> Optional[_IpAddress]:
    """`parse_client_ip`: an IPv4 or IPv6 address, IPv4-mapped IPv6 read as IPv4. `None` when the
    server would refuse it (Python alone accepts IPv6 zone ids: refused here too)."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Checks:
    """What one request asks of a token, as the server reads it."""

    __slots__ = ("org_id", "app_id", "required_scopes", "client_ip")

    def __init__(
        self,
        org_id: Optional[str],
        app_id: Optional[str],
        required_scopes: Tuple[str, ...],
        client_ip: Optional[_IpAddress],
    ) -> None:
        self.org_id = org_id
        self.app_id = app_id
        self.required_scopes = required_scopes
        self.client_ip = client_ip


# The org, app and scopes of the requests seen (a service has few): parsed once.
_Requirement = Tuple[str, str, Tuple[str, ...]]
_REQUIREMENTS: Dict[_Requirement, Optional[_Checks]] = {}
_MAX_REQUIREMENTS = 1024


def _parse_requirement(org_id: str, app_id: str, scopes: Tuple[str, ...]) -> Optional[_Checks]:
    if org_id == "":
        if app_id != "":
            return None  # an app id means nothing outside its org
    elif not _org_id_ok(org_id):
        return None
    if app_id != "" and _APP_ID.fullmatch(app_id) is None:
        return None
    if any(scope not in SCOPE_CATALOGUE for scope in scopes):
        return None
    return _Checks(org_id or None, app_id or None, scopes, None)


def _checks_of(request: pb.IntrospectRequest) -> Optional[_Checks]:
    """The request's checks, or `None` when the server must judge them (it refuses them, or
    knows a scope this module does not)."""
    key = (request.org_id, request.app_id, tuple(request.required_scopes))
    try:
        checks = _REQUIREMENTS[key]
    except KeyError:
        checks = _parse_requirement(*key)
        if len(_REQUIREMENTS) >= _MAX_REQUIREMENTS:
            _REQUIREMENTS.clear()
        _REQUIREMENTS[key] = checks
    if checks is None or request.client_ip == "":
        return checks
    ip = _client_ip(request.client_ip)
    if ip is None:
        return None
    return _Checks(checks.org_id, checks.app_id, checks.required_scopes, ip)


# --- cached answers --------------------------------------------------------------------------------

_ACTIVE = pb.INACTIVE_REASON_UNSPECIFIED  # `Entry.reason` of an active answer
_FINAL = frozenset({pb.INACTIVE_REASON_REVOKED, pb.INACTIVE_REASON_EXPIRED})
_BRIEF = frozenset({pb.INACTIVE_REASON_UNKNOWN, pb.INACTIVE_REASON_ACCOUNT_DISABLED})
_UUID_LENGTH = 36  # a service account id, as `_UUID` reads it


def _slot(service_account_id: str) -> int:
    return hash(service_account_id) & (SLOTS - 1)


class Access:
    """What a token may do and from where: its org, scopes, app access and networks. Tokens share
    these (a service has few orgs, scope sets, app lists and networks), so each distinct one is
    held once, by `_access`, and entries point to it (one pointer instead of six)."""

    __slots__ = ("org_id", "scopes", "all_apps", "app_ids", "cidrs", "networks")

    def __init__(
        self,
        org_id: str,
        scopes: Tuple[str, ...],
        all_apps: bool,
        app_ids: Tuple[str, ...],
        cidrs: Tuple[str, ...],
        networks: Tuple[_IpNetwork, ...],
    ) -> None:
        self.org_id = org_id
        self.scopes = scopes
        self.all_apps = all_apps
        self.app_ids = app_ids
        self.cidrs = cidrs  # as the server wrote them, for `allowed_cidrs`
        self.networks = networks


_NO_ACCESS = Access("", (), False, (), (), ())  # of inactive answers

# The distinct `Access` values seen, held once (bounded: emptied when full; entries keep theirs).
_AccessKey = Tuple[str, Tuple[str, ...], bool, Tuple[str, ...], Tuple[str, ...]]
_ACCESS: Dict[_AccessKey, Access] = {}
_MAX_ACCESS = 4096


def _access(response: pb.IntrospectResponse) -> Optional[Access]:
    """The shared `Access` of an active answer; `None` when a network cannot be read."""
    apps = response.app_access
    key = (
        response.org_id,
        tuple(response.scopes),
        apps.all_apps,
        tuple(apps.app_ids),
        tuple(response.allowed_cidrs),
    )
    held = _ACCESS.get(key)
    if held is None:
        org_id, scopes, all_apps, app_ids, cidrs = key
        try:
            networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
        except ValueError:
            return None
        if len(_ACCESS) >= _MAX_ACCESS:
            _ACCESS.clear()
        intern = sys.intern  # the same org, scope and app names across `Access` values
        held = _ACCESS[key] = Access(
            intern(org_id),
            tuple(map(intern, scopes)),
            all_apps,
            tuple(map(intern, app_ids)),
            cidrs,
            networks,
        )
    return held


class Entry:
    """One cached answer. Active answers carry the identity; inactive ones only their reason.

    Kept small (a service holds up to `capacity` of them): the token id and the account id are
    one string (`ids`), the org, scopes, app access and networks a shared `Access`, and the
    account's invalidation slot is not held but hashed again when needed."""

    __slots__ = ("filled", "reason", "expire_ns", "ids", "display_name", "access")

    def __init__(self, reason: pb.InactiveReason.ValueType) -> None:
        self.filled = 0
        self.reason = reason
        self.expire_ns: Optional[int] = None  # Unix time, nanoseconds; None: never expires
        self.ids = ""  # the token id, then the service account id (always `_UUID_LENGTH` long)
        self.display_name = ""
        self.access = _NO_ACCESS

    @property
    def token_id(self) -> str:
        return self.ids[:-_UUID_LENGTH]

    @property
    def service_account_id(self) -> str:
        return self.ids[-_UUID_LENGTH:]


class BriefEntry(Entry):
    """An answer not known to be final (reasons in `_BRIEF`): the only kind with a time limit,
    so the only kind that holds one."""

    __slots__ = ("until",)

    def __init__(self, reason: pb.InactiveReason.ValueType) -> None:
        super().__init__(reason)
        self.until = 0.0  # not served from this `time.monotonic()` on


def answer_of(response: pb.IntrospectResponse) -> Optional[Entry]:
    """The cacheable reading of an answer; `None` when it must not be cached (malformed, an
    inactive reason this version does not know) or cannot be read (then nothing is cached)."""
    if not response.active:
        reason = response.inactive_reason
        if reason in _BRIEF:
            return BriefEntry(reason)
        if reason in _FINAL:
            return Entry(reason)
        return None
    account = response.service_account_id
    token_id = response.token_id
    if _UUID.fullmatch(account) is None or not token_id:
        return None
    access = _access(response)
    if access is None:
        return None
    entry = Entry(_ACTIVE)
    entry.ids = token_id + account
    entry.display_name = response.service_account_display_name
    entry.access = access
    if response.HasField("expire_time"):
        expire = response.expire_time
        entry.expire_ns = expire.seconds * 1_000_000_000 + expire.nanos
    return entry


def inactive(reason: pb.InactiveReason.ValueType) -> pb.IntrospectResponse:
    """The server's answer for an inactive token."""
    return pb.IntrospectResponse(
        active=False,
        inactive_reason=reason,
        allowed=False,
        denial_reason=pb.DENIAL_REASON_TOKEN_INACTIVE,
        denial_reasons=[pb.DENIAL_REASON_TOKEN_INACTIVE],
    )


def decide(entry: Entry, checks: _Checks) -> pb.IntrospectResponse:
    """A cached answer applied to one request, by the server's rules (`evaluate`): revoked,
    expired and disabled first (only expiry can be found here: the others are never cached as
    active), then every check, reported in the order org, client address, app, scopes."""
    if entry.reason != _ACTIVE:
        return inactive(entry.reason)
    if entry.expire_ns is not None and entry.expire_ns <= time.time_ns():
        return inactive(pb.INACTIVE_REASON_EXPIRED)
    denials: List[pb.DenialReason.ValueType] = []
    access = entry.access
    org_matches = checks.org_id is None or checks.org_id == access.org_id
    if not org_matches:
        denials.append(pb.DENIAL_REASON_ORG_MISMATCH)
    if access.networks:
        ip = checks.client_ip
        if ip is None or not any(ip in network for network in access.networks):
            denials.append(pb.DENIAL_REASON_CLIENT_IP_NOT_ALLOWED)
    app_id = checks.app_id
    if app_id is not None and not (org_matches and (access.all_apps or app_id in access.app_ids)):
        denials.append(pb.DENIAL_REASON_APP_NOT_GRANTED)
    missing = [scope for scope in checks.required_scopes if scope not in access.scopes]
    if missing:
        denials.append(pb.DENIAL_REASON_SCOPE_MISSING)
    response = pb.IntrospectResponse(
        active=True,
        org_id=access.org_id,
        service_account_id=entry.service_account_id,
        service_account_display_name=entry.display_name,
        token_id=entry.token_id,
        scopes=access.scopes,
        allowed=not denials,
        denial_reason=denials[0] if denials else pb.DENIAL_REASON_UNSPECIFIED,
        missing_scopes=missing,
        denial_reasons=denials,
        allowed_cidrs=access.cidrs,
    )
    app_access = response.app_access
    app_access.SetInParent()  # the server always sends it
    if access.all_apps:
        app_access.all_apps = True
    else:
        app_access.app_ids.extend(access.app_ids)
    if entry.expire_ns is not None:
        seconds, nanos = divmod(entry.expire_ns, 1_000_000_000)
        response.expire_time.seconds = seconds
        response.expire_time.nanos = nanos
    return response


# --- the cache -------------------------------------------------------------------------------------


class Ticket:
    """Taken before an `Introspect` call is sent: what its answer may be cached under."""

    __slots__ = ("epoch", "generation")

    def __init__(self, epoch: int, generation: int) -> None:
        self.epoch = epoch
        self.generation = generation


class CallerCache:
    """The cached answers and the feed's state (no I/O: `CachingIntrospector` drives it)."""

    def __init__(self, capacity: int, max_staleness: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not max_staleness > 0:
            raise ValueError("max_staleness must be positive")
        self.capacity = capacity
        self.max_staleness = max_staleness
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        # Bumped by every message that drops answers.
        self.epoch = 1
        # The epoch of the last reset: entries filled before it are misses.
        self.reset_at = 0
        # Per slot of account ids: the epoch of the last invalidation.
        self.invalidated = [0] * SLOTS
        self.up = False
        # Bumped whenever the feed goes down or up.
        self.generation = 0
        self.last_heard = float("-inf")  # time.monotonic()
        self.closed = False  # the feed stops

    def __len__(self) -> int:
        return len(self.entries)

    def usable(self) -> bool:
        """The feed is up and spoke within the staleness bound."""
        return self.up and time.monotonic() - self.last_heard < self.max_staleness

    def get(self, key: bytes) -> Optional[Entry]:
        if not self.usable():
            return None
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.filled < self.reset_at or (
            entry.reason == _ACTIVE and entry.filled < self.invalidated[_slot(entry.service_account_id)]
        ):
            del self.entries[key]
            return None
        if isinstance(entry, BriefEntry) and time.monotonic() >= entry.until:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    def begin(self) -> Optional[Ticket]:
        """Call before sending `Introspect`; `None` when its answer must not be cached."""
        if not self.usable():
            return None
        return Ticket(self.epoch, self.generation)

    def insert(self, key: bytes, response: pb.IntrospectResponse, ticket: Ticket) -> bool:
        """Caches what the control plane answered, if that is allowed. Whether it was."""
        if ticket.generation != self.generation or not self.up:
            return False
        if ticket.epoch < self.reset_at:
            return False
        entry = answer_of(response)
        if entry is None:
            return False
        if entry.reason == _ACTIVE and ticket.epoch < self.invalidated[_slot(entry.service_account_id)]:
            return False
        entry.filled = ticket.epoch
        if isinstance(entry, BriefEntry):
            entry.until = time.monotonic() + BRIEF
        entries = self.entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.capacity:
            entries.popitem(last=False)
        return True

    # What the feed does.

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def reset(self) -> None:
        self.epoch += 1
        self.reset_at = self.epoch
        self.entries.clear()

    def invalidate(self, service_account_id: str) -> None:
        self.epoch += 1
        self.invalidated[_slot(service_account_id)] = self.epoch

    def set_up(self, up: bool) -> None:
        self.generation += 1
        self.up = up


async def _follow(
    cache_ref: "weakref.ReferenceType[CallerCache]",
    stub: pb_grpc.TokenIntrospectionAsyncStub,
    max_staleness: float,
) -> None:
    """Follows `WatchChanges` for as long as the cache exists, reconnecting with backoff. Each new
    stream starts from nothing (no resume token): its first message is a reset, which empties the
    cache before it is used again."""
    backoff = 0.05
    while True:
        cache = cache_ref()
        if cache is None or cache.closed:
            return
        del cache
        call = stub.WatchChanges(pb.WatchChangesRequest())
        try:
            while True:
                # Not `asyncio.wait_for`: before Python 3.12 it can swallow a cancellation that
                # comes as the message does, and `close()` would wait for ever.
                read = asyncio.ensure_future(call.read())
                try:
                    done, _ = await asyncio.wait((read,), timeout=max_staleness)
                finally:
                    if not read.done():
                        read.cancel()
                if not done:
                    break  # silent for max_staleness: a new stream
                message = read.result()
                cache = cache_ref()
                if cache is None or cache.closed:
                    return
                if not isinstance(message, pb.WatchChangesResponse):
                    break  # aio.EOF: the stream ended
                backoff = 0.05
                event = message.WhichOneof("event")
                if event == "reset":
                    cache.reset()
                    if not cache.up:
                        cache.set_up(True)
                elif event == "invalidation":
                    account = message.invalidation.service_account_id
                    if _UUID.fullmatch(account) is not None:
                        cache.invalidate(account)
                    else:
                        cache.reset()  # not an account this version can read: drop everything
                cache.heard()
                del cache
        except aio.UsageError:
            return  # the channel was closed
        except aio.AioRpcError as err:
            _log.debug("WatchChanges ended: %s", err.code().name)
        except Exception:  # noqa: BLE001 - the feed must outlive any one stream's failure
            _log.debug("WatchChanges failed", exc_info=True)
        finally:
            call.cancel()
            # However the stream ended (the channel closed included): nothing is served from
            # the cache until a new stream's reset.
            ended = cache_ref()
            if ended is not None:
                ended.set_up(False)
            del ended
        cache = cache_ref()
        if cache is None or cache.closed:
            return
        del cache
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


class CachingIntrospector:
    """`Introspect` with a caller-side cache kept coherent by `WatchChanges` (see the module).

    Args:
        channel: a `grpc.aio` channel to the control plane. It must lead to one replica at a
            time (one connection, as a channel to `host:port` does): the feed and the calls share
            it.
        capacity: the most tokens held (least recently used ones are dropped first).
        max_staleness: seconds without a message on the feed after which nothing is served from
            the cache (the server sends a heartbeat every second).
        timeout: default deadline of each `Introspect` call, in seconds.

    `introspect(request)` returns the `IntrospectResponse` the control plane would, or raises the
    call's `grpc.aio.AioRpcError` when it had to ask and got no answer (fail closed). The feed runs
    as a task of the running event loop, started on first use; stop it with `close()`.
    """

    def __init__(
        self,
        channel: aio.Channel,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> None:
        self._cache = CallerCache(capacity, max_staleness)
        self._stub = pb_grpc.TokenIntrospectionStub(channel)
        self._timeout = timeout
        self._feed: Optional[asyncio.Task[None]] = None
        self.calls = 0
        """`Introspect` calls sent."""
        self.hits = 0
        """Requests answered from the cache (malformed tokens not counted)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started on first use
        self.start()

    def __repr__(self) -> str:
        return f"CachingIntrospector(cached_tokens={len(self._cache)})"

    @property
    def max_staleness(self) -> float:
        return self._cache.max_staleness

    @property
    def cached_tokens(self) -> int:
        """Tokens held (some may no longer be servable)."""
        return len(self._cache)

    @property
    def feed_usable(self) -> bool:
        """Whether the feed is up and fresh: answers are served from and kept in the cache."""
        return self._cache.usable()

    def start(self) -> None:
        """Starts the feed in the running event loop (done on first use otherwise)."""
        if self._feed is None and not self._cache.closed:
            self._feed = asyncio.get_running_loop().create_task(
                _follow(weakref.ref(self._cache), self._stub, self._cache.max_staleness)
            )

    async def close(self) -> None:
        """Stops the feed; later requests all go to the control plane. Does not close the
        channel."""
        self._cache.closed = True
        feed, self._feed = self._feed, None
        self._cache.set_up(False)
        self._cache.entries.clear()
        if feed is not None:
            feed.cancel()
            try:
                await feed
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> CachingIntrospector:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def introspect(
        self, request: pb.IntrospectRequest, *, timeout: Optional[float] = None
    ) -> pb.IntrospectResponse:
        """What `Introspect` answers for `request`, from the cache when it may."""
        if self._feed is None:
            self.start()
        checks = _checks_of(request)
        if checks is None:
            # A requirement the server refuses (or a scope it alone knows): let it say so.
            return await self._call(request, timeout)
        key = token_hash(request.token)
        if key is None:
            return inactive(pb.INACTIVE_REASON_MALFORMED)
        cache = self._cache
        entry = cache.get(key)
        if entry is not None:
            self.hits += 1
            return decide(entry, checks)
        ticket = cache.begin()
        response = await self._call(request, timeout)
        if ticket is not None:
            cache.insert(key, response, ticket)
        return response

    async def _call(
        self, request: pb.IntrospectRequest, timeout: Optional[float]
    ) -> pb.IntrospectResponse:
        self.calls += 1
        return await self._stub.Introspect(
            request, timeout=self._timeout if timeout is None else timeout
        )
