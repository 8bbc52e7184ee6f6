#!/usr/bin/env python3
"""What the service-account verifier adds to an MCP tool call: p50/p99, with and without it.

Serves two MCP servers (streamable HTTP, uvicorn, each on its own thread): the example
`mcp_server.py`, which introspects every request's token, and the same `get_crash_summary` tool
on a server without auth. Then makes CALLS sequential `tools/call` requests to each through the
SDK's client, in alternating blocks, and prints the latency percentiles of both.

Environment:
  SERVICE_ACCOUNTS_ADDR  host:port of the control plane, plaintext (default localhost:50051)
  ADMIN_JWT              org-admin JWT (creates one account and token, deleted at the end)
  CALLS                  calls each way (default 500)
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import threading
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, Dict, List

import grpc
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp_server import CrashSummary, build_server

from embrace.serviceaccounts.v1 import resources_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2 as admin_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2_grpc as admin_grpc

APP = "checkout-ios"
BLOCK = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(server: MCPServer[Any], port: int) -> str:
    """Serves `server` on a thread; returns its URL."""
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    uv = uvicorn.Server(config)
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/mcp"


def unprotected() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("crash-insights-open")

    @server.tool()
    async def get_crash_summary(app_id: str) -> CrashSummary:
        """The example's tool, without auth."""
        return CrashSummary(
            org_id="acme",
            app_id=app_id,
            crash_free_sessions_percent=99.2,
            top_crash="NullPointerException in CheckoutViewModel.submit",
            seen_by_service_account_id="-",
            seen_by_service_account="-",
        )

    return server


async def measure(urls: Dict[str, str], token: str, calls: int) -> Dict[str, List[float]]:
    samples: Dict[str, List[float]] = {name: [] for name in urls}
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0)
    ) as http, AsyncExitStack() as stack:
        clients: Dict[str, Client] = {}
        for name, url in urls.items():
            transport = streamable_http_client(url, http_client=http)
            clients[name] = await stack.enter_async_context(Client(transport))
        for client in clients.values():  # warm-up
            for _ in range(20):
                await client.call_tool("get_crash_summary", {"app_id": APP})
        while any(len(s) < calls for s in samples.values()):
            for name, client in clients.items():
                for _ in range(min(BLOCK, calls - len(samples[name]))):
                    start = time.perf_counter()
                    result = await client.call_tool("get_crash_summary", {"app_id": APP})
                    samples[name].append((time.perf_counter() - start) * 1000)
                    if result.is_error:
                        raise SystemExit(f"{name}: the call failed: {result.content}")
    return samples


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    addr = os.environ.get("SERVICE_ACCOUNTS_ADDR", "localhost:50051")
    calls = int(os.environ.get("CALLS", "500"))
    auth = (("authorization", f"Bearer {os.environ['ADMIN_JWT']}"),)
    admin = admin_grpc.ServiceAccountAdminStub(grpc.insecure_channel(addr))
    account = admin.CreateServiceAccount(
        admin_pb2.CreateServiceAccountRequest(
            display_name=f"MCP latency {uuid.uuid4().hex[:8]}",
            app_access=resources_pb2.AppAccess(app_ids=[APP]),
        ),
        metadata=auth,
        timeout=10,
    ).service_account
    created = admin.CreateToken(
        admin_pb2.CreateTokenRequest(
            service_account_id=account.service_account_id,
            display_name="latency",
            scopes=["mcp:tools:call", "mcp:read"],
        ),
        metadata=auth,
        timeout=10,
    )
    try:
        open_port, protected_port = free_port(), free_port()
        protected = build_server(addr, resource_url=f"http://127.0.0.1:{protected_port}/mcp")
        urls = {
            "without verifier": serve(unprotected(), open_port),
            "with verifier": serve(protected, protected_port),
        }
        samples = asyncio.run(measure(urls, created.secret, calls))
    finally:  # deleting the account revokes its token
        admin.DeleteServiceAccount(
            admin_pb2.DeleteServiceAccountRequest(service_account_id=account.service_account_id),
            metadata=auth,
            timeout=10,
        )
    print(f"{calls} sequential tools/call each way, milliseconds")
    print(f"{'':18} {'p50':>7} {'p99':>7} {'mean':>7}")
    for name, values in samples.items():
        print(
            f"{name:18} {percentile(values, 0.50):7.2f} {percentile(values, 0.99):7.2f} "
            f"{statistics.fmean(values):7.2f}"
        )


if __name__ == "__main__":
    main()
