"""The control plane under test, shared by the tests in this directory.

Starts the control-plane binary (`SERVICE_ACCOUNTS_BIN`) on free ports with a data directory of
the caller's, waits until it listens, mints an org-admin JWT with `admin-token --data-dir` (the
server creates the development key it signs with), and issues and revokes service-account tokens
through the generated admin stubs. What only one test module needs (the MCP example server, TLS,
PostgreSQL, the HTTP introspection endpoint) stays in that module.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from embrace.serviceaccounts.v1 import resources_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2 as admin_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2_grpc as admin_grpc

BIN = os.environ.get(
    "SERVICE_ACCOUNTS_BIN", "/root/.cache/service-accounts-ci/target/release/service-accounts"
)
ORG = "acme"
APP = "checkout-ios"
OTHER_APP = "checkout-android"


def binary() -> str:
    """`BIN`, once it is known to be there."""
    assert os.access(BIN, os.X_OK), f"no control-plane binary at {BIN} (set SERVICE_ACCOUNTS_BIN)"
    return BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- tokens that were never issued ----------------------------------------------------------------


def checksummed(body: str) -> str:
    """`body` (`emb_sa_` and 37 characters of the URL-safe base64 alphabet) with its checksum: the
    CRC32 of those 44 characters, big-endian, unpadded base64. The server rejects a bad checksum
    without asking storage, so only such a token reaches it."""
    crc = zlib.crc32(body.encode()).to_bytes(4, "big")
    return body + base64.urlsafe_b64encode(crc).decode().rstrip("=")


def unknown_token() -> str:
    """A well-formed token that was never issued, random."""
    return checksummed("emb_sa_" + base64.urlsafe_b64encode(os.urandom(30)).decode()[:37])


def malformed(token: str) -> str:
    """The same token with its last checksum character changed: a typo, caught by the checksum."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


# --- the binary ---------------------------------------------------------------------------------------


@dataclass
class Issued:
    secret: str
    service_account_id: str
    display_name: str
    token_id: str


class ControlPlane:
    """The binary, started with `--listen` on a free port and `--data-dir data_dir` (its log in
    `data_dir/server.log`), and `args` after them. `issue` and `revoke` work once
    `connect_admin` has returned; every secret issued is appended to `secrets`."""

    def __init__(
        self,
        data_dir: str,
        args: Sequence[str] = (),
        *,
        secrets: List[str],
        label: str,
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        bin_path = binary()
        self.data_dir = data_dir
        self.secrets = secrets
        self.label = label  # what the display names of its accounts start with
        self.port = free_port()
        self.grpc_addr = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(data_dir, "server.log")
        self.channel: Optional[grpc.Channel] = None
        self.admin: Optional[admin_grpc.ServiceAccountAdminStub] = None
        self.auth: Tuple[Tuple[str, str], ...] = ()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [bin_path, "--listen", self.grpc_addr, "--data-dir", data_dir, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def wait_listening(self, *other_ports: int) -> None:
        """Until the gRPC port and `other_ports` accept connections (not necessarily ready)."""
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"control plane exited: {self.log()}"
            try:
                for port in (self.port, *other_ports):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"control plane did not listen: {self.log()}"
            time.sleep(0.05)

    def connect_admin(self, root_certificates: Optional[bytes] = None) -> None:
        """Mints an admin JWT for `ORG` and opens the admin channel (TLS when
        `root_certificates`, the CA to trust, is given)."""
        deadline = time.monotonic() + 30
        # The server creates the development key before it serves; admin-token only reads it.
        while not Path(self.data_dir, "admin-dev-key.pem").exists():
            assert self.proc.poll() is None, f"control plane exited: {self.log()}"
            assert time.monotonic() < deadline, "no development key"
            time.sleep(0.05)
        jwt = subprocess.run(
            [BIN, "admin-token", "--data-dir", self.data_dir, "--org-id", ORG, "--user-id", "alice"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(self.grpc_addr, credentials)
        else:
            self.channel = grpc.insecure_channel(self.grpc_addr)
        self.admin = admin_grpc.ServiceAccountAdminStub(self.channel)
        self.auth = (("authorization", f"Bearer {jwt}"),)

    def stop(self, *, kill: bool = False) -> None:
        """Closes the admin channel and stops the binary: SIGTERM (SIGKILL after 15 s), or at
        once with SIGKILL when `kill`."""
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is not None:
            return
        if not kill:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                pass
        self.proc.kill()
        self.proc.wait(timeout=10)

    def issue(
        self,
        scopes: Sequence[str],
        app_ids: Sequence[str] = (APP,),
        all_apps: bool = False,
        expire_time: Optional[int] = None,
    ) -> Issued:
        """A new account (with `all_apps`, or `app_ids`) and a token of it with `scopes`."""
        assert self.admin is not None, "connect_admin first"
        access = (
            resources_pb2.AppAccess(all_apps=True)
            if all_apps
            else resources_pb2.AppAccess(app_ids=list(app_ids))
        )
        account = self.admin.CreateServiceAccount(
            admin_pb2.CreateServiceAccountRequest(
                display_name=f"{self.label} {uuid.uuid4().hex[:12]}", app_access=access
            ),
            metadata=self.auth,
            timeout=10,
        ).service_account
        created = self.admin.CreateToken(
            admin_pb2.CreateTokenRequest(
                service_account_id=account.service_account_id,
                display_name="pytest",
                scopes=list(scopes),
                expire_time=None if expire_time is None else Timestamp(seconds=expire_time),
            ),
            metadata=self.auth,
            timeout=10,
        )
        self.secrets.append(created.secret)
        return Issued(
            secret=created.secret,
            service_account_id=account.service_account_id,
            display_name=account.display_name,
            token_id=created.token.token_id,
        )

    def revoke(self, issued: Issued) -> None:
        assert self.admin is not None, "connect_admin first"
        self.admin.RevokeToken(
            admin_pb2.RevokeTokenRequest(
                service_account_id=issued.service_account_id, token_id=issued.token_id
            ),
            metadata=self.auth,
            timeout=10,
        )
