"""Service-account tokens for MCP servers built with the official `mcp` SDK (2.x).

`ServiceAccountTokenVerifier` implements the SDK's `TokenVerifier` protocol: pass it to
`MCPServer(token_verifier=..., auth=AuthSettings(required_scopes=["mcp:tools:call"], ...))` and
every HTTP request's bearer token is checked with `TokenIntrospection.Introspect`. Tool handlers
then call `require_scopes`, `require_app` and `current_identity`.

Decisions, as an MCP client sees them:

* a service-account token that is active → the request is served; the SDK checks
  `AuthSettings.required_scopes` against the token's scopes (403 `insufficient_scope` otherwise);
* inactive (revoked, expired, unknown, disabled account) or malformed → `verify_token` returns
  `None`, and the SDK answers 401 `invalid_token`;
* the control plane unreachable or failing → `verify_token` raises `ControlPlaneUnavailable`;
  the SDK's bearer middleware does not catch it, so the server answers 500: never allowed, never
  "invalid token";
* a token that does not start with `emb_sa_` → the `fallback` verifier decides (the server's own
  OAuth verifier), or `None` without one.

With `cache_capacity` set, answers are cached at the caller and kept coherent by the control
plane's change feed (`embrace.serviceaccounts.cache.CachingIntrospector`): the same decisions, a
revocation or any other change still reaching the server within moments, and nothing served from
the cache once the feed has been silent for `max_staleness`.

Needs the `mcp` extra: `pip install "embrace-service-accounts[mcp]"`.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Optional, Sequence, Tuple

import grpc
from grpc import aio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from embrace.serviceaccounts.cache import DEFAULT_MAX_STALENESS, CachingIntrospector, well_formed
from embrace.serviceaccounts.v1 import token_introspection_pb2 as introspection_pb2
from embrace.serviceaccounts.v1 import token_introspection_pb2_grpc as introspection_grpc

__all__ = [
    "TOKEN_PREFIX",
    "SCOPE_TOOLS_CALL",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "ServiceAccountAccessToken",
    "ServiceAccountTokenVerifier",
    "ControlPlaneUnavailable",
    "AccessDenied",
    "current_identity",
    "require_scopes",
    "require_app",
]

TOKEN_PREFIX = "emb_sa_"
SCOPE_TOOLS_CALL = "mcp:tools:call"
"""Required for any MCP request: the server-level scope (`AuthSettings.required_scopes`)."""
SCOPE_READ = "mcp:read"
"""For tools that read."""
SCOPE_WRITE = "mcp:write"
"""For tools that write."""

_APP_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DEFAULT_TIMEOUT_SECONDS = 2.0
_DEFAULT_EXPIRY_HORIZON_SECONDS = 60


class ServiceAccountAccessToken(AccessToken):
    """The SDK's `AccessToken`, with the service account the token belongs to.

    `client_id` and `subject` are the service account id. `expires_at` is the token's expiry, or
    for a token that never expires, a short horizon (`expiry_horizon`, 60 s by default, and with
    the cache on no more than its `max_staleness`): every request is verified again, so the
    horizon only satisfies code that wants an expiry.
    `token_expires_at` is the token's own expiry (`None`: it never expires).
    """

    # The SDK keeps the bearer token on the AccessToken; keep it out of repr() and so out of logs.
    token: str = Field(repr=False)
    org_id: str
    service_account_id: str
    service_account_display_name: str
    token_id: str
    all_apps: bool
    app_ids: list[str]
    token_expires_at: Optional[int] = None

    def has_app(self, app_id: str) -> bool:
        """Whether the account may act on `app_id` of its own org (all apps, or that one)."""
        return self.all_apps or app_id in self.app_ids


class ControlPlaneUnavailable(RuntimeError):
    """Introspection did not answer (unreachable, timed out, or an error): a server error.

    Raised from `verify_token`; the SDK's middleware lets it through, so the MCP client gets a
    500. The message carries the gRPC status code only, never the token.
    """

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"service-accounts control plane did not answer Introspect: {code.name}")
        self.code = code


class AccessDenied(ToolError):
    """A tool refused by `require_scopes` or `require_app`.

    A `ToolError`, so the SDK returns it as the tool call's error result (`is_error` true) with
    this message, and logs it at INFO without a traceback.
    """


def _well_formed(token: str) -> bool:
    """Prefix, length, alphabet and CRC32 checksum: a typo'd or made-up token costs no call."""
    return well_formed(token)


class ServiceAccountTokenVerifier(TokenVerifier):
    """An `mcp` `TokenVerifier` that introspects service-account tokens.

    Args:
        target: the control plane's gRPC address, `host:port` as for `grpc.aio.insecure_channel`.
        fallback: the verifier for tokens that do not start with `emb_sa_` (for example the
            server's own OAuth verifier). Without it they are refused (`None`: 401).
        timeout: deadline of each `Introspect` call, in seconds.
        credentials: `grpc.ssl_channel_credentials(...)` for TLS, with a client key and
            certificate for mTLS. Without it the channel is plaintext.
        channel_options: extra gRPC channel arguments, as `(name, value)` pairs.
        expiry_horizon: seconds reported as `expires_at` for a token that never expires; with the
            cache on, no more than `max_staleness` (the cache's bound).
        resource: reported as `AccessToken.resource`, so that the SDK's
            `AuthSettings.validate_token_resource=True` (kept on for the fallback's tokens)
            accepts service-account tokens, which carry no audience: set it to the server's
            `resource_server_url`.
        cache_capacity: 0 (the default): every request is introspected. Otherwise up to this
            many tokens' answers are cached, kept coherent by `WatchChanges` on the same channel
            (`embrace.serviceaccounts.cache`).
        max_staleness: with the cache on, seconds without a message from the change feed after
            which the cache is not used (every request is introspected, and fails closed).
    """

    def __init__(
        self,
        target: str,
        *,
        fallback: Optional[TokenVerifier] = None,
        timeout: float = _DEFAULT_TIMEOUT_SECONDS,
        credentials: Optional[grpc.ChannelCredentials] = None,
        channel_options: Sequence[Tuple[str, object]] = (),
        expiry_horizon: int = _DEFAULT_EXPIRY_HORIZON_SECONDS,
        resource: Optional[str] = None,
        cache_capacity: int = 0,
        max_staleness: float = DEFAULT_MAX_STALENESS,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if expiry_horizon <= 0:
            raise ValueError("expiry_horizon must be positive")
        if cache_capacity < 0:
            raise ValueError("cache_capacity must be 0 (no cache) or positive")
        if not max_staleness > 0:
            raise ValueError("max_staleness must be positive")
        self._target = target
        self._fallback = fallback
        self._timeout = timeout
        self._credentials = credentials
        self._channel_options = tuple(channel_options)
        self._expiry_horizon = expiry_horizon
        self._resource = resource
        self._cache_capacity = cache_capacity
        self._max_staleness = max_staleness
        # grpc.aio channels belong to the event loop they were made in: made on first use, in the
        # server's loop (and again should the verifier be used from another loop).
        self._channel: Optional[aio.Channel] = None
        self._stub: Optional[introspection_grpc.TokenIntrospectionAsyncStub] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._cache: Optional[CachingIntrospector] = None

    def __repr__(self) -> str:
        return f"ServiceAccountTokenVerifier({self._target!r})"

    def _introspection(self) -> introspection_grpc.TokenIntrospectionAsyncStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            if self._credentials is None:
                channel = aio.insecure_channel(self._target, options=self._channel_options)
            else:
                channel = aio.secure_channel(
                    self._target, self._credentials, options=self._channel_options
                )
            self._channel = channel
            self._stub = introspection_grpc.TokenIntrospectionStub(channel)
            self._loop = loop
            # A cache of another loop's channel is dropped with it (its feed task, holding no
            # reference to it, ends).
            self._cache = None
            if self._cache_capacity:
                self._cache = CachingIntrospector(
                    channel,
                    capacity=self._cache_capacity,
                    max_staleness=self._max_staleness,
                    timeout=self._timeout,
                )
        return self._stub

    @property
    def cache(self) -> Optional[CachingIntrospector]:
        """The cache in use (`None` without `cache_capacity`, or before the first request)."""
        return self._cache

    def _expiry_horizon_seconds(self) -> float:
        if self._cache_capacity:
            return min(self._expiry_horizon, self._max_staleness)
        return self._expiry_horizon

    async def close(self) -> None:
        """Stops the cache's feed and closes the gRPC channel (a later `verify_token` opens a new
        one)."""
        channel, self._channel, self._stub, self._loop = self._channel, None, None, None
        cache, self._cache = self._cache, None
        if cache is not None:
            await cache.close()
        if channel is not None:
            await channel.close()

    async def verify_token(self, token: str) -> Optional[AccessToken]:
        if not token.startswith(TOKEN_PREFIX):
            return None if self._fallback is None else await self._fallback.verify_token(token)
        if not _well_formed(token):
            return None
        request = introspection_pb2.IntrospectRequest(token=token)
        try:
            stub = self._introspection()
            if self._cache is not None:
                answer = await self._cache.introspect(request, timeout=self._timeout)
            else:
                answer = await stub.Introspect(request, timeout=self._timeout)
        except aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None  # a token the server will not read: as malformed
            raise ControlPlaneUnavailable(err.code()) from err
        if not answer.active:
            return None
        return self._access_token(token, answer)

    def _access_token(
        self, token: str, answer: introspection_pb2.IntrospectResponse
    ) -> ServiceAccountAccessToken:
        token_expires_at: Optional[int] = None
        if answer.HasField("expire_time"):
            token_expires_at = answer.expire_time.seconds
            expires_at = token_expires_at
        else:
            # Floored: never past the horizon (nor, with the cache on, its staleness bound).
            expires_at = int(time.time() + self._expiry_horizon_seconds())
        return ServiceAccountAccessToken(
            token=token,
            client_id=answer.service_account_id,
            subject=answer.service_account_id,
            scopes=sorted(answer.scopes),
            expires_at=expires_at,
            resource=self._resource,
            org_id=answer.org_id,
            service_account_id=answer.service_account_id,
            service_account_display_name=answer.service_account_display_name,
            token_id=answer.token_id,
            all_apps=answer.app_access.all_apps,
            app_ids=list(answer.app_access.app_ids),
            token_expires_at=token_expires_at,
        )


def current_identity() -> Optional[ServiceAccountAccessToken]:
    """The service account of the request being served, or `None`.

    `None` when the request's token is not a service-account token (the fallback verifier's),
    or outside an authenticated HTTP request.
    """
    access = get_access_token()
    return access if isinstance(access, ServiceAccountAccessToken) else None


def _identity_or_refuse() -> ServiceAccountAccessToken:
    identity = current_identity()
    if identity is None:
        raise AccessDenied("this tool needs a service-account token")
    return identity


def require_scopes(*scopes: str) -> ServiceAccountAccessToken:
    """Refuses the tool call unless the token carries every one of `scopes`.

    The refusal names the missing scopes and nothing else. Returns the identity.
    """
    identity = _identity_or_refuse()
    granted = set(identity.scopes)
    missing = [scope for scope in dict.fromkeys(scopes) if scope not in granted]
    if missing:
        noun = "scope" if len(missing) == 1 else "scopes"
        raise AccessDenied(f"insufficient_scope: missing {noun} {' '.join(missing)}")
    return identity


def require_app(app_id: str) -> ServiceAccountAccessToken:
    """Refuses the tool call unless the token's account may act on `app_id`.

    The app is one of the token's own org (the org a tool acts in is the token's org); an
    account with all apps has every app of that org. Returns the identity.
    """
    identity = _identity_or_refuse()
    if _APP_ID_RE.fullmatch(app_id) is None:
        raise AccessDenied("not an app id (1-64 characters of A-Z, a-z, 0-9, _ and -)")
    if not identity.has_app(app_id):
        raise AccessDenied(f"app {app_id} is not granted to this service account")
    return identity
