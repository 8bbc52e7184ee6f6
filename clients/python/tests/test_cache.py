"""`embrace.serviceaccounts.cache` against the real control plane (SQLite), and its rules alone.

The live cases start the binary (`SERVICE_ACCOUNTS_BIN`), change accounts and tokens through the
admin API, and check that an answer the cache holds changes within 2 s; that the answer was held
is checked first (a request answered without an `Introspect` call). A small asyncio TCP proxy
between the cache's channel and the server freezes or cuts the link. The rules that depend on
timing (an answer in flight across an invalidation or a reset) are checked on `CallerCache`
directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
import tracemalloc
import uuid
from contextlib import asynccontextmanager
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Coroutine,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from control_plane import (
    APP,
    ORG,
    OTHER_APP,
    ControlPlane,
    Issued,
    checksummed,
    malformed,
    unknown_token,
)
from embrace.serviceaccounts import cache as cache_module
from embrace.serviceaccounts.cache import (
    CachingIntrospector,
    CallerCache,
    Ticket,
    token_hash,
    well_formed,
)
from embrace.serviceaccounts.v1 import resources_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2 as admin_pb2
from embrace.serviceaccounts.v1 import token_introspection_pb2 as pb
from embrace.serviceaccounts.v1 import token_introspection_pb2_grpc as pb_grpc

SECRETS: List[str] = []
READ = ["mcp:tools:call", "mcp:read"]
# What a change may take to reach a cached answer.
WITHIN = 2.0
# Reconnect quickly once a cut link is restored (grpc's default backoff starts at 1 s).
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
)


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with tempfile.TemporaryDirectory() as data_dir:
        cp = ControlPlane(data_dir, secrets=SECRETS, label="Cache test")
        try:
            cp.wait_listening()
            cp.connect_admin()
            yield cp
        finally:
            cp.stop(kill=True)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# --- admin changes ---------------------------------------------------------------------------------


def rotate(cp: ControlPlane, issued: Issued, grace_seconds: int = 0) -> str:
    assert cp.admin is not None
    rotated = cp.admin.RotateToken(
        admin_pb2.RotateTokenRequest(
            service_account_id=issued.service_account_id,
            token_id=issued.token_id,
            grace_period=Duration(seconds=grace_seconds) if grace_seconds else None,
        ),
        metadata=cp.auth,
        timeout=10,
    )
    SECRETS.append(rotated.secret)
    return rotated.secret


def set_cidrs(cp: ControlPlane, issued: Issued, cidrs: Sequence[str]) -> None:
    assert cp.admin is not None
    cp.admin.UpdateToken(
        admin_pb2.UpdateTokenRequest(
            token=resources_pb2.Token(
                service_account_id=issued.service_account_id,
                token_id=issued.token_id,
                allowed_cidrs=list(cidrs),
            ),
            update_mask=FieldMask(paths=["allowed_cidrs"]),
        ),
        metadata=cp.auth,
        timeout=10,
    )


def disable(cp: ControlPlane, issued: Issued) -> None:
    assert cp.admin is not None
    cp.admin.DisableServiceAccount(
        admin_pb2.DisableServiceAccountRequest(service_account_id=issued.service_account_id),
        metadata=cp.auth,
        timeout=10,
    )


def enable(cp: ControlPlane, issued: Issued) -> None:
    assert cp.admin is not None
    cp.admin.EnableServiceAccount(
        admin_pb2.EnableServiceAccountRequest(service_account_id=issued.service_account_id),
        metadata=cp.auth,
        timeout=10,
    )


def set_apps(cp: ControlPlane, issued: Issued, app_ids: Sequence[str]) -> None:
    assert cp.admin is not None
    cp.admin.SetAppAccess(
        admin_pb2.SetAppAccessRequest(
            service_account_id=issued.service_account_id,
            app_access=resources_pb2.AppAccess(app_ids=list(app_ids)),
        ),
        metadata=cp.auth,
        timeout=10,
    )


def grant_app(cp: ControlPlane, issued: Issued, app_id: str) -> None:
    assert cp.admin is not None
    cp.admin.GrantAppAccess(
        admin_pb2.GrantAppAccessRequest(
            service_account_id=issued.service_account_id, app_ids=[app_id]
        ),
        metadata=cp.auth,
        timeout=10,
    )


def revoke_app(cp: ControlPlane, issued: Issued, app_id: str) -> None:
    assert cp.admin is not None
    cp.admin.RevokeAppAccess(
        admin_pb2.RevokeAppAccessRequest(
            service_account_id=issued.service_account_id, app_ids=[app_id]
        ),
        metadata=cp.auth,
        timeout=10,
    )


def delete_account(cp: ControlPlane, issued: Issued) -> None:
    assert cp.admin is not None
    cp.admin.DeleteServiceAccount(
        admin_pb2.DeleteServiceAccountRequest(service_account_id=issued.service_account_id),
        metadata=cp.auth,
        timeout=10,
    )


# --- a cache on a live feed -------------------------------------------------------------------------


_DIRECT: List[aio.Channel] = []


async def direct_channel(cp: ControlPlane) -> aio.Channel:
    """A channel of the running loop to the control plane, for asking it without the cache
    (closed with the loop's cache, by `live_cache`)."""
    channel = aio.insecure_channel(cp.grpc_addr)
    _DIRECT.append(channel)
    return channel


@asynccontextmanager
async def live_cache(
    target: str,
    *,
    max_staleness: float = 5.0,
    capacity: int = 1000,
    timeout: float = 2.0,
    options: Sequence[Tuple[str, object]] = (),
) -> AsyncIterator[CachingIntrospector]:
    """A cache on its own channel to `target`, once its feed is up (its first reset arrived)."""
    async with aio.insecure_channel(target, options=options) as channel:
        async with CachingIntrospector(
            channel, capacity=capacity, max_staleness=max_staleness, timeout=timeout
        ) as cache:
            await until(lambda: cache.feed_usable, 5.0, "the feed did not come up")
            try:
                yield cache
            finally:
                while _DIRECT:
                    await _DIRECT.pop().close()


async def until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Waits until `condition()`; how long that took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, what
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def request(
    token: str,
    org_id: str = "",
    app_id: str = "",
    scopes: Sequence[str] = (),
    client_ip: str = "",
) -> pb.IntrospectRequest:
    return pb.IntrospectRequest(
        token=token,
        org_id=org_id,
        app_id=app_id,
        required_scopes=list(scopes),
        client_ip=client_ip,
    )


async def from_cache(cache: CachingIntrospector, req: pb.IntrospectRequest) -> pb.IntrospectResponse:
    """The answer to `req`, which must come from the cache (no `Introspect` call)."""
    calls, hits = cache.calls, cache.hits
    answer = await cache.introspect(req)
    assert cache.calls == calls and cache.hits == hits + 1, "not answered from the cache"
    return answer


async def warm(cache: CachingIntrospector, req: pb.IntrospectRequest) -> pb.IntrospectResponse:
    """Asks once (a call), then checks that the answer is now held."""
    first = await cache.introspect(req)
    second = await from_cache(cache, req)
    assert second.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )
    return second


def allowed(answer: pb.IntrospectResponse) -> bool:
    return answer.active and answer.allowed


def inactive_because(reason: pb.InactiveReason.ValueType) -> Callable[[pb.IntrospectResponse], bool]:
    return lambda answer: not answer.active and answer.inactive_reason == reason


def denied_because(reason: pb.DenialReason.ValueType) -> Callable[[pb.IntrospectResponse], bool]:
    return lambda answer: answer.active and not answer.allowed and answer.denial_reason == reason


async def changes_within(
    cache: CachingIntrospector,
    req: pb.IntrospectRequest,
    change: Callable[[], object],
    after: Callable[[pb.IntrospectResponse], bool],
) -> float:
    """Makes the admin change and asks until the answer is `after`; fails past `WITHIN` s. Then
    the answer must stay so (no stale answer served again)."""
    await asyncio.to_thread(change)
    start = time.monotonic()
    while not after(await cache.introspect(req)):
        elapsed = time.monotonic() - start
        assert elapsed < WITHIN, f"the change did not reach the cache in {WITHIN} s"
        await asyncio.sleep(0.01)
    took = time.monotonic() - start
    for _ in range(20):
        assert after(await cache.introspect(req))
    return took


# --- the token format -------------------------------------------------------------------------------


def test_the_format_check_is_the_servers(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ)
    secret = issued.secret
    assert well_formed(secret)
    assert token_hash(secret) == hashlib.sha256(secret.encode()).digest()
    assert well_formed(unknown_token())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    altered: List[str] = []
    for i in range(len(secret)):
        for replacement in ("A", "z", "-", "_", "0", "é", " "):
            if replacement != secret[i]:
                altered.append(secret[:i] + replacement + secret[i + 1 :])
    altered += [
        secret[:-1],
        secret + "A",
        secret.upper(),
        "emb_sb_" + secret[7:],
        malformed(secret),
        "",
        "emb_sa_",
        secret[:20] + "\ud800" + secret[21:],  # a lone surrogate
    ]
    for token in altered:
        assert not well_formed(token), token[:10]
        assert token_hash(token) is None
    # Every alphabet character is accepted where the checksum allows it: the check is not a
    # narrower one.
    body = secret[:44]
    for c in alphabet:
        assert well_formed(checksummed(body[:-1] + c))

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            stub = pb_grpc.TokenIntrospectionStub(await direct_channel(control_plane))
            # The server agrees, and the cache answers these itself, as the server does (all but
            # the lone surrogate, which no request can carry).
            for token in (t for t in altered if "\ud800" not in t):
                direct = await stub.Introspect(request(token), timeout=5)
                assert direct.inactive_reason == pb.INACTIVE_REASON_MALFORMED
                calls = cache.calls
                mine = await cache.introspect(request(token))
                assert cache.calls == calls, "a malformed token cost a call"
                assert mine.SerializeToString(deterministic=True) == direct.SerializeToString(
                    deterministic=True
                )
            assert (await stub.Introspect(request(secret), timeout=5)).active

    run(scenario())


# --- decisions from the cache are the server's ----------------------------------------------------


def test_cached_decisions_are_the_servers_for_every_requirement(
    control_plane: ControlPlane,
) -> None:
    restricted = control_plane.issue(READ, app_ids=[APP], expire_time=int(time.time()) + 3600)
    set_cidrs(control_plane, restricted, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    everywhere = control_plane.issue(["mcp:tools:call", "mcp:write"], all_apps=True)
    requirements = [
        request("", org, app, scopes, ip)
        for org in ("", ORG, "other-org")
        for app in (("", APP, OTHER_APP) if org else ("",))
        for scopes in ([], ["mcp:read"], ["mcp:write", "mcp:read"], ["mcp:write", "mcp:write"])
        for ip in ("", "10.1.2.3", "192.0.2.7", "192.0.2.8", "::ffff:10.0.0.1", "2001:db8::5")
    ]

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            stub = pb_grpc.TokenIntrospectionStub(await direct_channel(control_plane))
            seen: Set[Tuple[bool, int]] = set()
            for issued in (restricted, everywhere):
                await warm(cache, request(issued.secret))
                for template in requirements:
                    req = pb.IntrospectRequest()
                    req.CopyFrom(template)
                    req.token = issued.secret
                    direct = await stub.Introspect(req, timeout=5)
                    mine = await from_cache(cache, req)
                    assert mine.SerializeToString(deterministic=True) == direct.SerializeToString(
                        deterministic=True
                    ), (req.org_id, req.app_id, list(req.required_scopes), req.client_ip)
                    seen.add((direct.allowed, direct.denial_reason))
                    seen.update((False, reason) for reason in direct.denial_reasons)
            # Every outcome was among those compared.
            assert {reason for _, reason in seen} >= {
                pb.DENIAL_REASON_UNSPECIFIED,
                pb.DENIAL_REASON_ORG_MISMATCH,
                pb.DENIAL_REASON_CLIENT_IP_NOT_ALLOWED,
                pb.DENIAL_REASON_APP_NOT_GRANTED,
                pb.DENIAL_REASON_SCOPE_MISSING,
            }
            assert (True, pb.DENIAL_REASON_UNSPECIFIED) in seen

            # Inactive answers: revoked (final), unknown (kept for 1 s at most).
            control_plane.revoke(restricted)
            unknown = unknown_token()
            for token in (restricted.secret, unknown):
                req = request(token, ORG, APP, ["mcp:read"])
                direct = await stub.Introspect(req, timeout=5)
                assert not direct.active
                # The revocation's invalidation may still be on its way: ask until it is held.
                start = time.monotonic()
                while (await cache.introspect(req)).inactive_reason != direct.inactive_reason:
                    assert time.monotonic() - start < WITHIN
                    await asyncio.sleep(0.01)
                mine = await from_cache(cache, req)
                assert mine.SerializeToString(deterministic=True) == direct.SerializeToString(
                    deterministic=True
                )

    run(scenario())


def test_requirements_the_server_refuses_are_refused_by_it_even_for_a_cached_token(
    control_plane: ControlPlane,
) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            stub = pb_grpc.TokenIntrospectionStub(await direct_channel(control_plane))
            await warm(cache, request(issued.secret))
            for bad in (
                request(issued.secret, "a b"),
                request(issued.secret, "", APP),
                request(issued.secret, ORG, "not an app"),
                request(issued.secret, ORG, scopes=["admin"]),
                request(issued.secret, ORG, client_ip="fe80::1%eth0"),
                request(issued.secret, ORG, client_ip="10.0.0.1:443"),
                request(issued.secret, ORG, client_ip=" 10.0.0.1"),
            ):
                for ask in (stub.Introspect(bad, timeout=5), cache.introspect(bad)):
                    with pytest.raises(aio.AioRpcError) as raised:
                        await ask
                    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario())


# --- every change reaches the cache -----------------------------------------------------------------


def test_revoke_reaches_the_cache(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            req = request(issued.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, req))
            await changes_within(
                cache,
                req,
                lambda: control_plane.revoke(issued),
                inactive_because(pb.INACTIVE_REASON_REVOKED),
            )

    run(scenario())


def test_rotation_reaches_the_cache(control_plane: ControlPlane) -> None:
    revoked_at_once = control_plane.issue(READ)
    with_grace = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            old = request(revoked_at_once.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, old))
            new: List[str] = []
            await changes_within(
                cache,
                old,
                lambda: new.append(rotate(control_plane, revoked_at_once)),
                inactive_because(pb.INACTIVE_REASON_REVOKED),
            )
            assert allowed(await warm(cache, request(new[0], ORG, APP, ["mcp:read"])))

            # With a grace period the old token keeps working, until its new expiry: the cached
            # answer must carry that expiry.
            graced = request(with_grace.secret, ORG, APP, ["mcp:read"])
            answer = await warm(cache, graced)
            assert allowed(answer) and not answer.HasField("expire_time")
            rotated_at = int(time.time())
            await changes_within(
                cache,
                graced,
                lambda: rotate(control_plane, with_grace, grace_seconds=600),
                lambda answer: allowed(answer) and answer.HasField("expire_time"),
            )
            answer = await from_cache(cache, graced)
            assert rotated_at + 590 <= answer.expire_time.seconds <= int(time.time()) + 601

    run(scenario())


def test_token_networks_reach_the_cache_and_are_decided_there(
    control_plane: ControlPlane,
) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            outside = request(issued.secret, ORG, APP, ["mcp:read"], "192.0.2.1")
            inside = request(issued.secret, ORG, APP, ["mcp:read"], "10.1.2.3")
            no_address = request(issued.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, outside))
            await changes_within(
                cache,
                outside,
                lambda: set_cidrs(control_plane, issued, ["10.0.0.0/8"]),
                denied_because(pb.DENIAL_REASON_CLIENT_IP_NOT_ALLOWED),
            )
            answer = await from_cache(cache, outside)
            assert list(answer.allowed_cidrs) == ["10.0.0.0/8"]
            # The same cached answer, decided here for other addresses.
            assert allowed(await from_cache(cache, inside))
            assert denied_because(pb.DENIAL_REASON_CLIENT_IP_NOT_ALLOWED)(
                await from_cache(cache, no_address)
            ), "a restricted token without a client address"
            # Lifting the restriction reaches the cache too.
            await changes_within(
                cache, outside, lambda: set_cidrs(control_plane, issued, []), allowed
            )
            assert allowed(await from_cache(cache, no_address))

    run(scenario())


def test_disable_and_enable_reach_the_cache(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            req = request(issued.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, req))
            await changes_within(
                cache,
                req,
                lambda: disable(control_plane, issued),
                inactive_because(pb.INACTIVE_REASON_ACCOUNT_DISABLED),
            )
            # Held, but briefly: a disabled account's answer names no account to invalidate.
            await warm(cache, req)
            await changes_within(cache, req, lambda: enable(control_plane, issued), allowed)
            assert allowed(await from_cache(cache, req))

    run(scenario())


def test_app_access_changes_reach_the_cache(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ, app_ids=[APP])

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            on_app = request(issued.secret, ORG, APP, ["mcp:read"])
            on_other = request(issued.secret, ORG, OTHER_APP, ["mcp:read"])
            not_granted = denied_because(pb.DENIAL_REASON_APP_NOT_GRANTED)
            assert not_granted(await warm(cache, on_other))
            # Grant.
            await changes_within(
                cache, on_other, lambda: grant_app(control_plane, issued, OTHER_APP), allowed
            )
            assert allowed(await from_cache(cache, on_app))
            # Revoke.
            await changes_within(
                cache, on_app, lambda: revoke_app(control_plane, issued, APP), not_granted
            )
            assert allowed(await from_cache(cache, on_other))
            # Set (replacing the list).
            await changes_within(
                cache, on_other, lambda: set_apps(control_plane, issued, [APP]), not_granted
            )
            assert allowed(await from_cache(cache, on_app))

    run(scenario())


def test_delete_reaches_the_cache(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            req = request(issued.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, req))
            await changes_within(
                cache,
                req,
                lambda: delete_account(control_plane, issued),
                lambda answer: not answer.active,
            )

    run(scenario())


def test_a_token_expiring_stops_being_allowed_from_the_cache_on_time(
    control_plane: ControlPlane,
) -> None:
    expire = int(time.time()) + 3  # 2 to 3 s from now
    issued = control_plane.issue(READ, expire_time=expire)

    async def scenario() -> None:
        async with live_cache(control_plane.grpc_addr) as cache:
            req = request(issued.secret, ORG, APP, ["mcp:read"])
            assert allowed(await warm(cache, req))
            calls = cache.calls
            while time.time() < expire - 0.05:
                assert allowed(await cache.introspect(req))
                await asyncio.sleep(0.01)
            while time.time() < expire:
                await asyncio.sleep(0.005)
            # From its expiry on, the cache says expired, by itself: the server sends nothing
            # when a token expires.
            answer = await cache.introspect(req)
            assert inactive_because(pb.INACTIVE_REASON_EXPIRED)(answer), answer
            assert cache.calls == calls, "expiry was not decided by the cache"

    run(scenario())


# --- the link to the control plane ------------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of the control plane that can freeze the link (bytes stop moving,
    connections stay open) or cut it (connections dropped, new ones refused)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut_off = False
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.links: Set[asyncio.StreamWriter] = set()
        self.server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self.links.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data or self.cut_off:
                break
            await self.thawed.wait()
            if self.cut_off:
                break
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def cut(self) -> None:
        self.cut_off = True
        self.thawed.set()
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    def restore(self) -> None:
        self.cut_off = False


def test_a_frozen_link_is_served_from_the_cache_until_max_staleness_then_fails_closed(
    control_plane: ControlPlane,
) -> None:
    issued = control_plane.issue(READ)
    staleness = 3.0

    async def scenario() -> None:
        async with Proxy(control_plane.port) as proxy:
            async with live_cache(proxy.target, max_staleness=staleness, timeout=0.5) as cache:
                req = request(issued.secret, ORG, APP, ["mcp:read"])
                assert allowed(await warm(cache, req))
                proxy.freeze()
                frozen_at = time.monotonic()
                # The last heartbeat came at most ~1 s before the freeze.
                while time.monotonic() < frozen_at + staleness - 1.3:
                    assert allowed(await from_cache(cache, req))
                    await asyncio.sleep(0.05)
                await until(lambda: not cache.feed_usable, 2.0, "still used past max_staleness")
                assert time.monotonic() >= frozen_at + staleness - 1.2
                calls = cache.calls
                with pytest.raises(aio.AioRpcError) as raised:
                    await cache.introspect(req)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert cache.calls == calls + 1, "past max_staleness the control plane is asked"
                # The link back: the feed starts over, and the cache is used again.
                proxy.thaw()
                await until(lambda: cache.feed_usable, 10.0, "the feed did not come back")
                assert allowed(await warm(cache, req))

    run(scenario())


def test_a_cut_link_is_not_used_until_the_new_feeds_reset_then_fills_again(
    control_plane: ControlPlane,
) -> None:
    issued = control_plane.issue(READ)
    other = control_plane.issue(READ)

    async def scenario() -> None:
        async with Proxy(control_plane.port) as proxy:
            async with live_cache(proxy.target, timeout=0.5, options=FAST_RECONNECT) as cache:
                req = request(issued.secret, ORG, APP, ["mcp:read"])
                assert allowed(await warm(cache, req))
                proxy.cut()
                await until(lambda: not cache.feed_usable, 2.0, "the cut was not noticed")
                # Not served, though still held: the control plane is asked, and cannot answer.
                assert cache.cached_tokens >= 1
                with pytest.raises(aio.AioRpcError):
                    await cache.introspect(req)
                # A change the feed cannot carry while cut.
                control_plane.revoke(issued)
                proxy.restore()
                await until(lambda: cache.feed_usable, 10.0, "the feed did not come back")
                # The new feed's reset dropped the answer held from before.
                assert cache.cached_tokens == 0
                calls = cache.calls
                assert inactive_because(pb.INACTIVE_REASON_REVOKED)(await cache.introspect(req))
                assert cache.calls == calls + 1
                # And it fills again.
                assert allowed(await warm(cache, request(other.secret, ORG, APP, ["mcp:read"])))
                assert inactive_because(pb.INACTIVE_REASON_REVOKED)(await from_cache(cache, req))

    run(scenario())


def test_close_stops_the_feed(control_plane: ControlPlane) -> None:
    issued = control_plane.issue(READ)

    async def scenario() -> None:
        async with aio.insecure_channel(control_plane.grpc_addr) as channel:
            cache = CachingIntrospector(channel)
            await until(lambda: cache.feed_usable, 5.0, "the feed did not come up")
            feed = cache._feed
            assert feed is not None and not feed.done()
            await cache.close()
            assert feed.done() and not cache.feed_usable and cache.cached_tokens == 0
            # Still answers, by asking.
            calls = cache.calls
            assert allowed(await cache.introspect(request(issued.secret)))
            assert allowed(await cache.introspect(request(issued.secret)))
            assert cache.calls == calls + 2

    run(scenario())


# --- the rules, on CallerCache alone ----------------------------------------------------------------

ACCOUNT = "01a24bcf-88ad-74f0-a8a2-6f19606976a3"


def active_answer(account: str = ACCOUNT, cidrs: Sequence[str] = ()) -> pb.IntrospectResponse:
    return pb.IntrospectResponse(
        active=True,
        allowed=True,
        org_id="acme",
        service_account_id=account,
        service_account_display_name="Bot",
        token_id=str(uuid.uuid4()),
        scopes=["mcp:tools:call"],
        app_access=resources_pb2.AppAccess(app_ids=["checkout-ios"]),
        allowed_cidrs=list(cidrs),
    )


def inactive_answer(reason: pb.InactiveReason.ValueType) -> pb.IntrospectResponse:
    return pb.IntrospectResponse(active=False, inactive_reason=reason)


def key() -> bytes:
    digest = token_hash(unknown_token())
    assert digest is not None
    return digest


def live(capacity: int = 100, max_staleness: float = 5.0) -> CallerCache:
    """A cache whose feed is up and has just spoken."""
    cache = CallerCache(capacity, max_staleness)
    cache.reset()
    cache.set_up(True)
    cache.heard()
    return cache


def ticket(cache: CallerCache) -> Ticket:
    taken = cache.begin()
    assert taken is not None
    return taken


def test_an_answer_in_flight_across_an_invalidation_of_its_account_is_never_served() -> None:
    cache = live()
    k = key()
    begun = ticket(cache)
    cache.invalidate(ACCOUNT)  # arrives while the call is in flight
    cache.insert(k, active_answer(), begun)
    assert cache.get(k) is None
    # The next call's answer is served.
    assert cache.insert(k, active_answer(), ticket(cache))
    assert cache.get(k) is not None
    # An invalidation drops what is held.
    cache.invalidate(ACCOUNT)
    assert cache.get(k) is None
    # Another account's invalidation (in another slot) does not.
    other = str(uuid.uuid4())
    while cache_module._slot(other) == cache_module._slot(ACCOUNT):
        other = str(uuid.uuid4())
    assert cache.insert(k, active_answer(), ticket(cache))
    cache.invalidate(other)
    assert cache.get(k) is not None
    # In flight across another account's invalidation: served.
    begun = ticket(cache)
    cache.invalidate(other)
    k2 = key()
    assert cache.insert(k2, active_answer(), begun)
    assert cache.get(k2) is not None


def test_an_answer_in_flight_across_a_reset_or_a_reconnect_is_never_served() -> None:
    cache = live()
    a, b, c = key(), key(), key()
    begun = ticket(cache)
    cache.reset()
    cache.insert(a, active_answer(), begun)
    assert cache.get(a) is None

    begun = ticket(cache)
    cache.set_up(False)
    cache.set_up(True)
    cache.reset()
    cache.heard()
    cache.insert(b, active_answer(), begun)
    assert cache.get(b) is None

    # Held answers are dropped by a reset, final ones too.
    assert cache.insert(a, active_answer(), ticket(cache))
    assert cache.insert(c, inactive_answer(pb.INACTIVE_REASON_REVOKED), ticket(cache))
    cache.reset()
    assert cache.get(a) is None and cache.get(c) is None and len(cache) == 0


def test_an_answer_whose_call_began_under_another_generation_is_not_cached() -> None:
    # The feed went down and up while the call was in flight (without the reset that a new
    # stream starts with, so that this rule alone is what refuses it).
    cache = live()
    k = key()
    begun = ticket(cache)
    cache.set_up(False)
    cache.set_up(True)
    assert not cache.insert(k, active_answer(), begun)
    assert cache.get(k) is None
    assert cache.insert(k, active_answer(), ticket(cache))
    assert cache.get(k) is not None


def test_a_stale_answer_does_not_replace_a_fresh_one() -> None:
    cache = live()
    k = key()
    stale = ticket(cache)
    cache.invalidate(ACCOUNT)
    assert cache.insert(k, active_answer(), ticket(cache))  # asked after the invalidation
    assert not cache.insert(k, active_answer(), stale)  # answered later, asked before it
    assert cache.get(k) is not None


def test_nothing_is_served_or_cached_while_the_feed_is_down_or_silent() -> None:
    cache = CallerCache(100, 0.05)
    assert cache.begin() is None, "no feed yet"
    cache.reset()
    cache.heard()
    assert cache.begin() is None, "a feed that is not up (no reset of its stream yet)"
    cache.set_up(True)
    k = key()
    assert cache.insert(k, active_answer(), ticket(cache))
    assert cache.get(k) is not None
    time.sleep(0.08)
    assert cache.get(k) is None, "past max_staleness"
    assert cache.begin() is None
    cache.heard()
    assert cache.get(k) is not None
    cache.set_up(False)
    assert cache.get(k) is None, "feed down"


def test_revoked_and_expired_are_kept_unknown_and_disabled_briefly_others_never() -> None:
    cache = live()
    held: Dict[int, Tuple[bytes, bool]] = {}
    for reason in (
        pb.INACTIVE_REASON_REVOKED,
        pb.INACTIVE_REASON_EXPIRED,
        pb.INACTIVE_REASON_UNKNOWN,
        pb.INACTIVE_REASON_ACCOUNT_DISABLED,
        pb.INACTIVE_REASON_MALFORMED,
        pb.INACTIVE_REASON_UNSPECIFIED,
    ):
        k = key()
        held[reason] = (k, cache.insert(k, inactive_answer(reason), ticket(cache)))
    assert not held[pb.INACTIVE_REASON_MALFORMED][1]
    assert not held[pb.INACTIVE_REASON_UNSPECIFIED][1]
    for reason in (
        pb.INACTIVE_REASON_REVOKED,
        pb.INACTIVE_REASON_EXPIRED,
        pb.INACTIVE_REASON_UNKNOWN,
        pb.INACTIVE_REASON_ACCOUNT_DISABLED,
    ):
        entry = cache.get(held[reason][0])
        assert entry is not None and entry.reason == reason
    time.sleep(cache_module.BRIEF + 0.05)
    assert cache.get(held[pb.INACTIVE_REASON_UNKNOWN][0]) is None, "unknown for at most 1 s"
    assert cache.get(held[pb.INACTIVE_REASON_ACCOUNT_DISABLED][0]) is None
    assert cache.get(held[pb.INACTIVE_REASON_REVOKED][0]) is not None
    assert cache.get(held[pb.INACTIVE_REASON_EXPIRED][0]) is not None
    # Final answers stay through an invalidation (they name no account; they never change).
    cache.invalidate(ACCOUNT)
    assert cache.get(held[pb.INACTIVE_REASON_REVOKED][0]) is not None


def test_an_answer_this_version_cannot_read_is_not_cached() -> None:
    cache = live()
    k = key()
    assert not cache.insert(k, active_answer(cidrs=["10.0.0.0/33"]), ticket(cache))
    unreadable = active_answer()
    unreadable.service_account_id = "not-a-uuid"
    assert not cache.insert(k, unreadable, ticket(cache))
    assert cache.get(k) is None


def test_the_capacity_is_a_bound_least_recently_used_first_out() -> None:
    cache = live(capacity=3)
    keys = [key() for _ in range(4)]
    for k in keys[:3]:
        assert cache.insert(k, active_answer(), ticket(cache))
    assert cache.get(keys[0]) is not None  # used: kept
    assert cache.insert(keys[3], active_answer(), ticket(cache))
    assert len(cache) == 3
    assert cache.get(keys[1]) is None, "the least recently used one goes"
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))


def test_no_token_is_kept_only_its_hash() -> None:
    cache = live()
    secret = unknown_token()
    k = token_hash(secret)
    assert k is not None
    assert cache.insert(k, active_answer(), ticket(cache))
    assert list(cache.entries) == [hashlib.sha256(secret.encode()).digest()]
    entry = cache.get(k)
    assert entry is not None
    assert secret not in repr([getattr(entry, name) for name in entry.__slots__])


def test_memory_per_cached_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """10,000 answers of distinct accounts and tokens, measured with tracemalloc (printed; run
    pytest with -s to see it)."""
    count = 10_000
    cache = live(capacity=count)
    answers = []
    for i in range(count):
        answer = active_answer(account=str(uuid.uuid4()))
        answer.service_account_display_name = f"CI Pipeline {i:05d}"
        answer.scopes[:] = ["mcp:read", "mcp:tools:call"]
        answer.expire_time.seconds = int(time.time()) + 86_400 + i
        answers.append((key(), answer))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        begun = ticket(cache)
        for k, answer in answers:
            cache.insert(k, answer, begun)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(cache) == count
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # The keys existed before (made by the test), and are kept: count them as the cache's.
    held += count * sys.getsizeof(answers[0][0])
    per_entry = held / count
    with capsys.disabled():
        print(f"\ncache: {per_entry:.0f} bytes per cached answer ({count} answers)")
    assert per_entry < 500, per_entry  # about 450 on CPython 3.11: fails if that grows
