#!/usr/bin/env python3
"""An MCP server (official `mcp` SDK, streamable HTTP) that accepts service-account tokens.

Every request needs a bearer token with `mcp:tools:call`; `get_crash_summary` also needs
`mcp:read`, `annotate_release` `mcp:write`, and both need access to the app they are given.
`whoami` says who called: a service account, or a user of the server's own OAuth (`fallback`).

Environment:
  SERVICE_ACCOUNTS_ADDR  host:port of the control plane, plaintext (default localhost:50051)
  MCP_HOST, MCP_PORT     where this server listens (default 127.0.0.1:8000)
  MCP_RESOURCE_URL       this server's public URL, named in 401 challenges (RFC 9728)
                         (default http://MCP_HOST:MCP_PORT/mcp)
  MCP_ISSUER_URL         the authorization server of the server's OAuth users, advertised in
                         the protected-resource metadata (default: the resource URL's origin)

Run it (needs `pip install -e "clients/python[mcp]"`):
  python clients/python/examples/mcp_server.py
"""

from __future__ import annotations

import os
from typing import Any, Optional
from urllib.parse import urlsplit

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl, BaseModel

from embrace.serviceaccounts.mcp import (
    SCOPE_READ,
    SCOPE_TOOLS_CALL,
    SCOPE_WRITE,
    ServiceAccountTokenVerifier,
    current_identity,
    require_app,
    require_scopes,
)


class CrashSummary(BaseModel):
    org_id: str
    app_id: str
    crash_free_sessions_percent: float
    top_crash: str
    seen_by_service_account_id: str
    seen_by_service_account: str


class Annotation(BaseModel):
    org_id: str
    app_id: str
    note: str
    annotated_by_service_account_id: str


def build_server(
    control_plane: str,
    *,
    resource_url: str,
    issuer_url: Optional[str] = None,
    fallback: Optional[TokenVerifier] = None,
) -> MCPServer[Any]:
    """The protected server: service-account tokens, and `fallback`'s tokens if given."""
    verifier = ServiceAccountTokenVerifier(control_plane, fallback=fallback, timeout=2.0)
    if issuer_url is None:
        parts = urlsplit(resource_url)
        issuer_url = f"{parts.scheme}://{parts.netloc}"
    server: MCPServer[Any] = MCPServer(
        "crash-insights",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=AnyHttpUrl(issuer_url),
            resource_server_url=AnyHttpUrl(resource_url),
            # Every MCP request needs mcp:tools:call; the SDK answers 403 insufficient_scope
            # before any tool runs when the token lacks it.
            required_scopes=[SCOPE_TOOLS_CALL],
            # Service-account tokens carry no audience: introspection is the authority (see
            # clients/python/README.md). A fallback verifier must check its tokens' audience.
            validate_token_resource=False,
        ),
    )

    @server.tool()
    async def get_crash_summary(app_id: str) -> CrashSummary:
        """Crash-free sessions and the top crash of one app of the caller's org."""
        require_scopes(SCOPE_READ)
        identity = require_app(app_id)
        return CrashSummary(
            org_id=identity.org_id,  # the org a tool acts in is the token's org
            app_id=app_id,
            crash_free_sessions_percent=99.2,
            top_crash="NullPointerException in CheckoutViewModel.submit",
            seen_by_service_account_id=identity.service_account_id,
            seen_by_service_account=identity.service_account_display_name,
        )

    @server.tool()
    async def annotate_release(app_id: str, note: str) -> Annotation:
        """Adds a note to the latest release of one app of the caller's org."""
        require_scopes(SCOPE_WRITE)
        identity = require_app(app_id)
        return Annotation(
            org_id=identity.org_id,
            app_id=app_id,
            note=note,
            annotated_by_service_account_id=identity.service_account_id,
        )

    @server.tool()
    async def whoami() -> str:
        """Who is calling: a service account, or a user of the server's own OAuth."""
        identity = current_identity()
        if identity is not None:
            return (
                f"service account {identity.service_account_display_name!r} "
                f"({identity.service_account_id}) of org {identity.org_id}"
            )
        access = get_access_token()
        return f"OAuth client {access.client_id}" if access is not None else "anonymous"

    return server


def main() -> None:
    host = os.environ.get("MCP_HOST", "127.0.0.1")
    port = int(os.environ.get("MCP_PORT", "8000"))
    server = build_server(
        os.environ.get("SERVICE_ACCOUNTS_ADDR", "localhost:50051"),
        resource_url=os.environ.get("MCP_RESOURCE_URL", f"http://{host}:{port}/mcp"),
        issuer_url=os.environ.get("MCP_ISSUER_URL"),
    )
    server.run("streamable-http", host=host, port=port)


if __name__ == "__main__":
    main()
