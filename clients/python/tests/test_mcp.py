"""`embrace.serviceaccounts.mcp` against the real control plane and the real `mcp` SDK.

Starts the control-plane binary (`SERVICE_ACCOUNTS_BIN`), serves the example MCP server
(examples/mcp_server.py) with uvicorn on a thread, and drives it with the SDK's own streamable-HTTP
client, a bearer token in its httpx client's headers. The HTTP statuses and challenges of the
SDK client's requests are read with an httpx response hook.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, List, Optional, Tuple

import grpc
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import AnyHttpUrl

from control_plane import APP, ORG, OTHER_APP, ControlPlane, checksummed, free_port, malformed
from embrace.serviceaccounts.mcp import (
    ControlPlaneUnavailable,
    ServiceAccountAccessToken,
    ServiceAccountTokenVerifier,
    current_identity,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mcp_server.py"
OAUTH_TOKEN = "oauth-user-token"
OAUTH_TOKEN_NO_SCOPE = "oauth-user-token-without-scopes"

# Every secret minted by these tests; none may appear in the MCP servers' logs.
SECRETS: List[str] = []


# --- logs of everything in this process (the MCP servers run here, on threads) ---------------


class _Capture(logging.Handler):
    """What the MCP servers log: everything in this process but the test's own client side."""

    CLIENT_SIDE = ("httpx2", "httpcore2", "mcp.client")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.CLIENT_SIDE):
            return
        self.lines.append(self.format(record))  # with the traceback, when there is one


LOGS = _Capture()


@pytest.fixture(scope="module", autouse=True)
def capture_logs() -> Iterator[_Capture]:
    root = logging.getLogger()
    level = root.level
    root.addHandler(LOGS)
    root.setLevel(logging.DEBUG)
    yield LOGS
    root.removeHandler(LOGS)
    root.setLevel(level)


# --- the control plane ---------------------------------------------------------------------------


def start_control_plane(data_dir: str) -> ControlPlane:
    cp = ControlPlane(data_dir, secrets=SECRETS, label="MCP test")
    cp.wait_listening()
    cp.connect_admin()
    return cp


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    with tempfile.TemporaryDirectory() as data_dir:
        cp = start_control_plane(data_dir)
        try:
            yield cp
        finally:
            cp.stop(kill=True)


# --- the example MCP server, on a uvicorn thread ------------------------------------------------


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("mcp_server_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OAuthUsers:
    """The server's own OAuth verifier, as a test double: knows one user token."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    async def verify_token(self, token: str) -> Optional[AccessToken]:
        self.seen.append(token)
        if token not in (OAUTH_TOKEN, OAUTH_TOKEN_NO_SCOPE):
            return None
        return AccessToken(
            token=token,
            client_id="oauth-user-7",
            scopes=["mcp:tools:call"] if token == OAUTH_TOKEN else [],
            expires_at=int(time.time()) + 3600,
        )


@dataclass
class McpServer:
    url: str
    resource_url: str
    oauth: OAuthUsers
    server: uvicorn.Server
    thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def cached_server(verifier: ServiceAccountTokenVerifier, resource_url: str) -> MCPServer[Any]:
    """A server with one tool, `whoami`, behind `verifier` (one with a cache)."""
    server: MCPServer[Any] = MCPServer(
        "cached",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=AnyHttpUrl("http://127.0.0.1"),
            resource_server_url=AnyHttpUrl(resource_url),
            required_scopes=["mcp:tools:call"],
            validate_token_resource=False,
        ),
    )

    @server.tool()
    async def whoami() -> str:
        identity = current_identity()
        return "anonymous" if identity is None else identity.service_account_id

    return server


def start_mcp_server(
    control_plane_addr: str, verifier: Optional[ServiceAccountTokenVerifier] = None
) -> McpServer:
    """The example server, or with `verifier`, `cached_server`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    oauth = OAuthUsers()
    if verifier is None:
        mcp_server = _load_example().build_server(
            control_plane_addr, resource_url=url, fallback=oauth
        )
    else:
        mcp_server = cached_server(verifier, url)
    app = mcp_server.streamable_http_app(host="127.0.0.1")
    # log_config=None: uvicorn's loggers propagate to the root logger, where the test reads them.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="debug")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the MCP server thread died"
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.02)
    return McpServer(url=url, resource_url=url, oauth=oauth, server=server, thread=thread)


@pytest.fixture(scope="module")
def mcp_server(control_plane: ControlPlane) -> Iterator[McpServer]:
    server = start_mcp_server(control_plane.grpc_addr)
    try:
        yield server
    finally:
        server.stop()


# --- the SDK's client -----------------------------------------------------------------------------


@dataclass
class Seen:
    """Status and WWW-Authenticate of every HTTP response the SDK client received."""

    responses: List[Tuple[int, str]] = field(default_factory=list)

    @property
    def statuses(self) -> List[int]:
        return [status for status, _ in self.responses]


@asynccontextmanager
async def connect(url: str, token: Optional[str], seen: Seen) -> AsyncIterator[Client]:
    async def on_response(response: httpx2.Response) -> None:
        seen.responses.append(
            (response.status_code, response.headers.get("www-authenticate", ""))
        )

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30.0),
        event_hooks={"response": [on_response]},
    ) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    group = getattr(exc, "exceptions", None)  # an ExceptionGroup of the SDK's task groups
    if group is None:
        yield exc
    else:
        for inner in group:
            yield from _leaves(inner)


def fails_with_mcp_error(coro: Any) -> MCPError:
    """Runs `coro`, which must fail with the SDK client's MCPError (perhaps in a group)."""
    try:
        asyncio.run(coro)
    except BaseException as exc:  # noqa: BLE001 - unwrapped below
        errors = [leaf for leaf in _leaves(exc) if isinstance(leaf, MCPError)]
        if not errors:
            raise
        return errors[0]
    raise AssertionError("the call succeeded")


# --- the cases --------------------------------------------------------------------------------------


def test_read_allowed_and_the_tool_sees_the_identity(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read"])

    async def scenario() -> CallToolResult:
        async with connect(mcp_server.url, issued.secret, Seen()) as client:
            return await client.call_tool("get_crash_summary", {"app_id": APP})

    result = run(scenario())
    assert not result.is_error, text_of(result)
    summary = result.structured_content
    assert summary is not None
    assert summary["org_id"] == ORG
    assert summary["app_id"] == APP
    assert summary["seen_by_service_account_id"] == issued.service_account_id
    assert summary["seen_by_service_account"] == issued.display_name
    assert summary["crash_free_sessions_percent"] == 99.2


def test_all_apps_account_reads_any_app_and_writes_with_write_scope(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read", "mcp:write"], all_apps=True)

    async def scenario() -> Tuple[CallToolResult, CallToolResult]:
        async with connect(mcp_server.url, issued.secret, Seen()) as client:
            read = await client.call_tool("get_crash_summary", {"app_id": OTHER_APP})
            write = await client.call_tool(
                "annotate_release", {"app_id": OTHER_APP, "note": "rolled back"}
            )
            return read, write

    read, write = run(scenario())
    assert not read.is_error, text_of(read)
    assert not write.is_error, text_of(write)
    assert write.structured_content is not None
    assert write.structured_content["annotated_by_service_account_id"] == issued.service_account_id


def test_verifier_reports_identity_and_expiry(control_plane: ControlPlane) -> None:
    never = control_plane.issue(["mcp:tools:call", "mcp:read"], app_ids=[APP, OTHER_APP])
    expiry = int(time.time()) + 3600
    expiring = control_plane.issue(["mcp:tools:call"], all_apps=True, expire_time=expiry)
    verifier = ServiceAccountTokenVerifier(control_plane.grpc_addr)

    async def scenario() -> List[Optional[AccessToken]]:
        try:
            return [await verifier.verify_token(t.secret) for t in (never, expiring)]
        finally:
            await verifier.close()

    now = int(time.time())
    first, second = run(scenario())
    assert isinstance(first, ServiceAccountAccessToken)
    assert isinstance(second, ServiceAccountAccessToken)
    assert first.org_id == ORG and first.client_id == never.service_account_id
    assert first.service_account_id == never.service_account_id
    assert first.service_account_display_name == never.display_name
    assert first.token_id == never.token_id
    assert first.scopes == ["mcp:read", "mcp:tools:call"]
    assert not first.all_apps and sorted(first.app_ids) == sorted([APP, OTHER_APP])
    # Never expires: a short horizon for the SDK, and the truth beside it.
    assert first.token_expires_at is None
    assert first.expires_at is not None and now + 50 <= first.expires_at <= now + 61
    assert second.all_apps and second.app_ids == []
    assert second.expires_at == expiry and second.token_expires_at == expiry
    assert never.secret not in repr(first)


def test_write_with_read_only_token_is_refused_naming_mcp_write(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read"])

    async def scenario() -> CallToolResult:
        async with connect(mcp_server.url, issued.secret, Seen()) as client:
            return await client.call_tool("annotate_release", {"app_id": APP, "note": "hi"})

    result = run(scenario())
    assert result.is_error
    message = text_of(result)
    assert "mcp:write" in message
    # Names the missing scope and nothing else: not the scopes the token has.
    assert "mcp:read" not in message and "mcp:tools:call" not in message
    assert result.structured_content is None


def test_app_not_granted_is_refused_naming_the_app(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read", "mcp:write"], app_ids=[APP])

    async def scenario() -> Tuple[CallToolResult, CallToolResult]:
        async with connect(mcp_server.url, issued.secret, Seen()) as client:
            read = await client.call_tool("get_crash_summary", {"app_id": OTHER_APP})
            write = await client.call_tool("annotate_release", {"app_id": OTHER_APP, "note": "x"})
            return read, write

    for result in run(scenario()):
        assert result.is_error
        message = text_of(result)
        assert OTHER_APP in message
        assert APP + " " not in message and f"{APP}\n" not in message and not message.endswith(APP)


def test_no_token_is_401_with_bearer_challenge_and_resource_metadata(
    mcp_server: McpServer,
) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with connect(mcp_server.url, None, seen) as client:
            await client.call_tool("whoami", {})

    fails_with_mcp_error(scenario())
    assert seen.responses, "the SDK client sent no request"
    status, challenge = seen.responses[0]
    assert status == 401
    assert challenge.startswith("Bearer ")
    metadata_url = mcp_server.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata_url}"' in challenge
    assert all(s == 401 for s in seen.statuses), seen.responses


def test_malformed_and_unknown_tokens_are_401(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read"])
    typo = malformed(issued.secret)  # checksum broken
    unknown = checksummed("emb_sa_" + "b" * 37)  # well-formed: the control plane says UNKNOWN
    for token in ["emb_sa_nope", typo, "emb_sa_" + "x" * 300, unknown]:
        seen = Seen()

        async def scenario() -> None:
            async with connect(mcp_server.url, token, seen) as client:
                await client.call_tool("whoami", {})

        fails_with_mcp_error(scenario())
        assert seen.statuses and all(s == 401 for s in seen.statuses), seen.responses
        assert 'error="invalid_token"' in seen.responses[0][1]


def test_revoked_token_is_401_on_the_very_next_request(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read"])
    seen = Seen()

    async def scenario() -> None:
        async with connect(mcp_server.url, issued.secret, seen) as client:
            first = await client.call_tool("get_crash_summary", {"app_id": APP})
            assert not first.is_error, text_of(first)
            before = len(seen.responses)
            control_plane.revoke(issued)  # returns: the next request must be refused
            with pytest.raises(MCPError):
                await client.call_tool("get_crash_summary", {"app_id": APP})
            after = seen.responses[before:]
            assert after and after[0][0] == 401, after
            assert 'error="invalid_token"' in after[0][1]

    run(scenario())


def test_control_plane_down_is_a_server_error_never_401_never_allowed() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        cp = start_control_plane(data_dir)
        server = start_mcp_server(cp.grpc_addr)
        try:
            issued = cp.issue(["mcp:tools:call", "mcp:read"])
            seen = Seen()

            async def scenario() -> None:
                async with connect(server.url, issued.secret, seen) as client:
                    ok = await client.call_tool("get_crash_summary", {"app_id": APP})
                    assert not ok.is_error, text_of(ok)
                    before = len(seen.responses)
                    cp.stop(kill=True)  # killed: connection refused from now on
                    with pytest.raises(MCPError):
                        await client.call_tool("get_crash_summary", {"app_id": APP})
                    after = seen.statuses[before:]
                    assert after and after[0] == 500, seen.responses[before:]
                    assert 401 not in after and 200 not in after, after

            run(scenario())

            # A new MCP session while it is down: refused with 500 at the handshake.
            fresh = Seen()

            async def reconnect() -> None:
                async with connect(server.url, issued.secret, fresh) as client:
                    await client.call_tool("get_crash_summary", {"app_id": APP})

            fails_with_mcp_error(reconnect())
            assert fresh.statuses and all(s == 500 for s in fresh.statuses), fresh.responses
            assert any("ControlPlaneUnavailable" in line for line in LOGS.lines)
        finally:
            server.stop()
            cp.stop(kill=True)


def test_control_plane_not_answering_is_deadline_exceeded_not_invalid() -> None:
    # A peer that accepts TCP and never speaks HTTP/2: the call runs into its deadline.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        verifier = ServiceAccountTokenVerifier(f"127.0.0.1:{port}", timeout=0.5)
        issued_like = checksummed("emb_sa_" + "a" * 37)

        async def scenario() -> None:
            try:
                await verifier.verify_token(issued_like)
            finally:
                await verifier.close()

        with pytest.raises(ControlPlaneUnavailable) as raised:
            run(scenario())
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert issued_like not in str(raised.value)


def test_other_tokens_go_to_the_fallback_verifier(
    control_plane: ControlPlane, mcp_server: McpServer
) -> None:
    issued = control_plane.issue(["mcp:tools:call", "mcp:read"])

    async def oauth_user() -> Tuple[str, CallToolResult]:
        async with connect(mcp_server.url, OAUTH_TOKEN, Seen()) as client:
            who = await client.call_tool("whoami", {})
            # The service-account helpers refuse a token that is not a service account's.
            refused = await client.call_tool("get_crash_summary", {"app_id": APP})
            return text_of(who), refused

    who, refused = run(oauth_user())
    assert who == "OAuth client oauth-user-7"
    assert refused.is_error and "service-account token" in text_of(refused)

    seen = Seen()

    async def stranger() -> None:
        async with connect(mcp_server.url, "some-other-token", seen) as client:
            await client.call_tool("whoami", {})

    fails_with_mcp_error(stranger())
    assert seen.statuses and all(s == 401 for s in seen.statuses)

    async def service_account() -> str:
        async with connect(mcp_server.url, issued.secret, Seen()) as client:
            return text_of(await client.call_tool("whoami", {}))

    assert issued.service_account_id in run(service_account())

    # The server-level scope is the SDK's check (AuthSettings.required_scopes): 403.
    unscoped = Seen()

    async def without_tools_call() -> None:
        async with connect(mcp_server.url, OAUTH_TOKEN_NO_SCOPE, unscoped) as client:
            await client.call_tool("whoami", {})

    fails_with_mcp_error(without_tools_call())
    assert unscoped.responses and unscoped.responses[0][0] == 403, unscoped.responses
    assert 'error="insufficient_scope"' in unscoped.responses[0][1]
    assert OAUTH_TOKEN in mcp_server.oauth.seen and "some-other-token" in mcp_server.oauth.seen
    assert not any(t.startswith("emb_sa_") for t in mcp_server.oauth.seen)


def test_cached_verifier_refuses_a_revoked_token_within_2_s(control_plane: ControlPlane) -> None:
    verifier = ServiceAccountTokenVerifier(
        control_plane.grpc_addr, cache_capacity=100, max_staleness=5.0
    )
    server = start_mcp_server(control_plane.grpc_addr, verifier)
    try:
        issued = control_plane.issue(["mcp:tools:call", "mcp:read"])
        seen = Seen()

        async def scenario() -> None:
            async with connect(server.url, issued.secret, seen) as client:
                # Allowed; once the feed is up (after the first requests), from the cache.
                deadline = time.monotonic() + 10
                while verifier.cache is None or verifier.cache.hits < 3:
                    result = await client.call_tool("whoami", {})
                    assert not result.is_error and text_of(result) == issued.service_account_id
                    assert time.monotonic() < deadline, "no request was answered from the cache"
                cache = verifier.cache
                calls, hits = cache.calls, cache.hits
                assert text_of(await client.call_tool("whoami", {})) == issued.service_account_id
                assert cache.calls == calls and cache.hits > hits, "not from the cache"

                before = len(seen.responses)
                await asyncio.to_thread(control_plane.revoke, issued)
                revoked_at = time.monotonic()
                while True:
                    try:
                        await client.call_tool("whoami", {})
                    except MCPError:
                        break
                    assert time.monotonic() - revoked_at < 2.0, "still allowed 2 s after revoke"
                assert time.monotonic() - revoked_at < 2.0
                refused = [r for r in seen.responses[before:] if r[0] != 200]
                assert refused and refused[0][0] == 401, seen.responses[before:]
                assert 'error="invalid_token"' in refused[0][1]

        run(scenario())
    finally:
        server.stop()


def test_cached_verifier_reports_no_horizon_past_its_staleness_bound(
    control_plane: ControlPlane,
) -> None:
    never = control_plane.issue(["mcp:tools:call"])
    verifier = ServiceAccountTokenVerifier(
        control_plane.grpc_addr, cache_capacity=10, max_staleness=3.0
    )

    async def scenario() -> List[Optional[AccessToken]]:
        try:
            first = await verifier.verify_token(never.secret)
            cache = verifier.cache
            assert cache is not None
            deadline = time.monotonic() + 5
            while not cache.feed_usable:
                assert time.monotonic() < deadline, "the feed did not come up"
                await asyncio.sleep(0.01)
            await verifier.verify_token(never.secret)  # cached now
            hits = cache.hits
            last = await verifier.verify_token(never.secret)
            assert cache.hits == hits + 1
            return [first, last]
        finally:
            await verifier.close()

    before = time.time()
    for access in run(scenario()):
        assert isinstance(access, ServiceAccountAccessToken)
        assert access.token_expires_at is None
        assert access.expires_at is not None
        assert int(before) <= access.expires_at <= time.time() + 3.0
        assert access.service_account_id == never.service_account_id


def test_no_secret_in_the_mcp_servers_logs() -> None:
    # Runs last: every token the cases above used, against what the servers logged meanwhile
    # (uvicorn's access and error logs, the SDK's, the verifier's, tracebacks included).
    text = "\n".join(LOGS.lines)
    assert len(SECRETS) >= 8
    assert "POST /mcp" in text, "the servers' logs were not captured"
    assert "insufficient_scope" in text  # the refusals are logged, at INFO
    # Hints only in the failure message, so that a failure does not print the secrets itself.
    leaked = [s[:10] + "…" for s in SECRETS if s in text or s[7:] in text]
    assert not leaked, f"tokens in the logs: {leaked}"
    assert OAUTH_TOKEN not in text and OAUTH_TOKEN_NO_SCOPE not in text
