"""`POST /oauth2/introspect` (RFC 7662) against an off-the-shelf client library: Authlib.

The control plane (`SERVICE_ACCOUNTS_BIN`) runs with `--http-listen`, `--introspection-clients`
and `--issuer`, on SQLite and on PostgreSQL (a fresh database on `TEST_DATABASE_URL`, dropped
afterwards), over plain HTTP and over HTTPS (`--tls-cert`/`--tls-key`, a CA made here, which the
clients verify). A resource server is modelled as Authlib documents it: a `ResourceProtector`
with an `IntrospectTokenValidator` subclass whose `introspect_token` calls the introspection
endpoint, here with Authlib's own `OAuth2Client.introspect_token` (client_secret_basic and
client_secret_post). Accounts and tokens are made with the generated admin stubs.

Run by .ci/python-tests.sh, which installs the pinned Authlib, httpx2 and cryptography and sets
RFC7662_TESTS=1. Where they are not installed this module is skipped, unless RFC7662_TESTS=1 says
it must run. The binary, its admin JWT and the accounts and tokens come from control_plane.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

if os.environ.get("RFC7662_TESTS") != "1":
    pytest.importorskip("authlib", reason="Authlib is installed by .ci/python-tests.sh")
    pytest.importorskip("httpx2", reason="httpx2 is installed by .ci/python-tests.sh")
    pytest.importorskip("cryptography", reason="installed by .ci/python-tests.sh")

import httpx2
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6749 import ResourceProtector
from authlib.oauth2.rfc6749.requests import JsonRequest
from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc7662 import IntrospectionToken, IntrospectTokenValidator
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control_plane import (
    APP,
    ORG,
    OTHER_APP,
    ControlPlane,
    binary,
    free_port,
    malformed,
    unknown_token,
)

OTHER_ORG = "globex"
ISSUER = "https://service-accounts.test.example"
CLIENT_ID = "resource-server-1"
READ = ["mcp:tools:call", "mcp:read"]

# Every secret this module mints or holds (tokens and client secrets); none may be logged.
SECRETS: List[str] = []


# --- certificates ------------------------------------------------------------------------------


@dataclass
class Pki:
    ca_pem: bytes
    cert_path: str
    key_path: str
    ca_path: str


def make_pki(directory: str) -> Pki:
    """A CA, and a server certificate issued by it for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc7662 test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    Path(paths["ca.pem"]).write_bytes(ca_pem)
    Path(paths["cert.pem"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(paths["key.pem"]).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pki(ca_pem, paths["cert.pem"], paths["key.pem"], paths["ca.pem"])


# --- PostgreSQL --------------------------------------------------------------------------------


def database_url_base() -> Optional[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("TEST_DATABASE_URL is not set: the PostgreSQL case cannot be skipped in CI")
    pytest.skip("PostgreSQL: set TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
    return None


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def psql(url: str, sql: str) -> str:
    assert shutil.which("psql"), "psql (PostgreSQL's client) is needed for the PostgreSQL case"
    done = subprocess.run(
        ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"psql failed: {done.stderr}"
    return done.stdout.strip()


@dataclass
class Database:
    admin_url: str  # the TEST_DATABASE_URL database, from which this one is made and dropped
    name: str
    url: str

    def drop(self) -> None:
        psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def create_database() -> Database:
    base = database_url_base()
    assert base is not None
    name = f"sa_rfc7662_{uuid.uuid4().hex[:12]}"
    psql(base, f'CREATE DATABASE "{name}"')
    return Database(admin_url=base, name=name, url=with_database(base, name))


# --- the control plane --------------------------------------------------------------------------


class IntrospectionServer(ControlPlane):
    """The control plane with its HTTP listener, the introspection endpoint's client file and
    issuer, over HTTPS with `tls`, on PostgreSQL with `database_url`."""

    def __init__(
        self,
        data_dir: str,
        *,
        tls: Optional[Pki] = None,
        database_url: Optional[str] = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.client_secret, entry = new_introspection_client(CLIENT_ID)
        clients_file = os.path.join(data_dir, "introspection-clients")
        Path(clients_file).write_text(f"# resource servers\n{entry}\n")
        self.http_port = free_port()
        args = [
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--introspection-clients", clients_file,
            "--issuer", ISSUER,
            *extra,
        ]
        if tls is not None:
            args += ["--tls-cert", tls.cert_path, "--tls-key", tls.key_path]
        if database_url is not None:
            args += ["--database-url", database_url, "--admin-trust-dev-key"]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RUST_LOG")}
        if os.environ.get("RFC7662_SERVER_RUST_LOG"):  # e.g. debug: the no-secret check, louder
            env["RUST_LOG"] = os.environ["RFC7662_SERVER_RUST_LOG"]
        super().__init__(data_dir, args, secrets=SECRETS, label="RFC 7662 test", env=env)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}/oauth2/introspect"
        # For httpx2: an SSLContext trusting the test CA, or True.
        self.verify: Any = True if tls is None else ssl.create_default_context(cafile=tls.ca_path)
        self.database: Optional[Database] = None


def new_introspection_client(client_id: str) -> Tuple[str, str]:
    """The `introspection-client` subcommand: (secret, line for the clients file)."""
    out = subprocess.run(
        [binary(), "introspection-client", "--client-id", client_id],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    secret = next(
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("client_secret:")
    )
    entry = next(line.strip() for line in out.splitlines() if line.startswith(f"{client_id}:"))
    SECRETS.append(secret)
    return secret, entry


def launch(
    data_dir: str,
    *,
    tls: Optional[Pki] = None,
    database_url: Optional[str] = None,
    extra: Sequence[str] = (),
) -> IntrospectionServer:
    """Starts the binary; returns once both listeners accept connections (not necessarily ready)."""
    cp = IntrospectionServer(data_dir, tls=tls, database_url=database_url, extra=extra)
    cp.wait_listening(cp.http_port)
    return cp


def wait_ready(cp: IntrospectionServer) -> None:
    """Until the endpoint answers (503 while storage is not ready), then the admin channel."""
    deadline = time.monotonic() + 60
    while True:
        assert cp.proc.poll() is None, f"control plane exited: {cp.log()}"
        status = post(cp, {"token": unknown_token()}, basic=True).status_code
        if status == 200:
            break
        assert status == 503, f"while starting: {status}"
        assert time.monotonic() < deadline, "storage did not become ready"
        time.sleep(0.1)
    tls = isinstance(cp.verify, ssl.SSLContext)
    cp.connect_admin(Path(cp.data_dir, "ca.pem").read_bytes() if tls else None)


def post(
    cp: IntrospectionServer, form: Dict[str, str], basic: bool = False, **kwargs: Any
) -> httpx2.Response:
    """A raw form POST (httpx2, which Authlib's client is built on), for what Authlib cannot send."""
    if basic:
        kwargs["auth"] = (CLIENT_ID, cp.client_secret)
    with httpx2.Client(verify=cp.verify, timeout=10) as http:
        return http.post(cp.url, data=form, **kwargs)


@pytest.fixture(
    scope="module",
    params=[("sqlite", False), ("sqlite", True), ("postgres", False), ("postgres", True)],
    ids=["sqlite-http", "sqlite-https", "postgres-http", "postgres-https"],
)
def control_plane(request: pytest.FixtureRequest) -> Iterator[IntrospectionServer]:
    backend, with_tls = request.param
    database = create_database() if backend == "postgres" else None
    with tempfile.TemporaryDirectory() as data_dir:
        pki = make_pki(data_dir) if with_tls else None
        cp = launch(data_dir, tls=pki, database_url=database.url if database else None)
        cp.database = database
        try:
            wait_ready(cp)
            yield cp
        finally:
            cp.stop()
            if database is not None:
                database.drop()


# --- the resource server, as Authlib documents it --------------------------------------------------


class ControlPlaneIntrospection(IntrospectTokenValidator):
    """Authlib's RFC 7662 validator: `introspect_token` asks the introspection endpoint with
    Authlib's own client, authenticated by `auth_method`; the route's checks are sent as the
    endpoint's extension parameters."""

    def __init__(
        self,
        cp: IntrospectionServer,
        auth_method: str = "client_secret_basic",
        checks: Optional[Dict[str, str]] = None,
        client_id: str = CLIENT_ID,
        client_secret: Optional[str] = None,
    ) -> None:
        super().__init__(realm="rfc7662-test")
        self.cp = cp
        self.auth_method = auth_method
        self.checks = checks or {}
        self.client_id = client_id
        self.client_secret = cp.client_secret if client_secret is None else client_secret
        self.answers: List[Dict[str, Any]] = []

    def client(self) -> OAuth2Client:
        return OAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method=self.auth_method,
            verify=self.cp.verify,
            timeout=10,
        )

    def introspect_token(self, token_string: str) -> IntrospectionToken:
        with self.client() as client:
            resp = client.introspect_token(
                self.cp.url,
                token=token_string,
                token_type_hint="access_token",
                body=urlencode(self.checks),
            )
        resp.raise_for_status()
        answer = resp.json()
        self.answers.append(answer)
        return IntrospectionToken(answer)

    def validate_token(self, token: Any, scopes: Any, request: Any) -> None:
        super().validate_token(token, scopes, request)
        # A route with checks serves only what the control plane allowed (README: `active` alone
        # says the token is valid somewhere, not that it may act here).
        if self.checks and not token.get("allowed"):
            raise InvalidTokenError(realm=self.realm)


def protect(validator: ControlPlaneIntrospection) -> ResourceProtector:
    protector = ResourceProtector()
    protector.register_token_validator(validator)
    return protector


def bearer_request(token: str) -> JsonRequest:
    return JsonRequest("GET", "https://rs.example/crash-summary", {"Authorization": f"Bearer {token}"})


def introspect(
    cp: IntrospectionServer, token: str, auth_method: str = "client_secret_basic", **checks: str
) -> httpx2.Response:
    with ControlPlaneIntrospection(cp, auth_method).client() as client:
        resp: httpx2.Response = client.introspect_token(cp.url, token=token, body=urlencode(checks))
    return resp


def assert_no_store(resp: httpx2.Response) -> None:
    assert resp.headers.get("cache-control") == "no-store", dict(resp.headers)


# --- 1. active tokens, and Authlib's scope validation --------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_active_token_is_accepted_with_every_member(control_plane: IntrospectionServer, auth_method: str) -> None:
    cp = control_plane
    issued = cp.issue(READ, app_ids=[APP, OTHER_APP])
    validator = ControlPlaneIntrospection(cp, auth_method)
    token = protect(validator).validate_request(["mcp:read"], bearer_request(issued.secret))

    assert isinstance(token, IntrospectionToken)
    answer = validator.answers[-1]
    assert set(answer) == {
        "active", "scope", "client_id", "sub", "username", "token_type", "jti", "iat", "iss",
        "org_id", "app_access",
    }, answer  # no exp (this token never expires), no allowed (no check parameter)
    assert answer["active"] is True
    assert answer["scope"] == "mcp:read mcp:tools:call"  # space separated, sorted
    assert token.client_id == token.sub == issued.service_account_id
    assert token.username == issued.display_name
    assert token.token_type == "Bearer"
    assert token.jti == issued.token_id
    assert isinstance(token.iat, int) and abs(token.iat - time.time()) < 300
    assert token.iss == ISSUER
    assert answer["org_id"] == ORG
    assert answer["app_access"] == {"app_ids": sorted([APP, OTHER_APP])} or answer[
        "app_access"
    ] == {"app_ids": [APP, OTHER_APP]}, answer["app_access"]
    assert token.get_scope() == answer["scope"]
    assert token.get_client_id() == issued.service_account_id


def test_all_apps_account_and_scope_validation(control_plane: IntrospectionServer) -> None:
    cp = control_plane
    read = cp.issue(READ, all_apps=True)
    call_only = cp.issue(["mcp:tools:call"], all_apps=True)
    validator = ControlPlaneIntrospection(cp)
    protector = protect(validator)

    token = protector.validate_request(["mcp:read"], bearer_request(read.secret))
    assert token["app_access"] == {"all_apps": True}
    # Authlib's list means "any one of these scope sets"; one set of two scopes needs both.
    protector.validate_request(["mcp:read mcp:tools:call"], bearer_request(read.secret))
    protector.validate_request(["mcp:tools:call"], bearer_request(call_only.secret))
    with pytest.raises(InsufficientScopeError):
        protector.validate_request(["mcp:read"], bearer_request(call_only.secret))
    with pytest.raises(InsufficientScopeError):
        protector.validate_request(["mcp:write"], bearer_request(read.secret))
    assert validator.answers[-1]["active"] is True  # refused for its scope, not as inactive


# --- 2. the check parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_check_parameters_give_allowed_and_denial_reasons(
    control_plane: IntrospectionServer, auth_method: str
) -> None:
    cp = control_plane
    issued = cp.issue(READ)

    allowed = introspect(
        cp, issued.secret, auth_method, org_id=ORG, app_id=APP, required_scopes="mcp:read mcp:tools:call"
    )
    assert allowed.status_code == 200, allowed.text
    body = allowed.json()
    assert body["active"] is True and body["allowed"] is True, body
    assert body["denial_reasons"] == []

    elsewhere = introspect(
        cp, issued.secret, auth_method, org_id=OTHER_ORG, app_id=APP, required_scopes="mcp:read mcp:write"
    ).json()
    assert elsewhere["active"] is True and elsewhere["allowed"] is False, elsewhere
    assert elsewhere["denial_reasons"] == [
        "DENIAL_REASON_ORG_MISMATCH",
        "DENIAL_REASON_APP_NOT_GRANTED",
        "DENIAL_REASON_SCOPE_MISSING",
    ]
    assert elsewhere["org_id"] == ORG  # the identity of who tried is still reported

    other_app = introspect(cp, issued.secret, auth_method, org_id=ORG, app_id=OTHER_APP).json()
    assert other_app["allowed"] is False
    assert other_app["denial_reasons"] == ["DENIAL_REASON_APP_NOT_GRANTED"]

    scope_only = introspect(cp, issued.secret, auth_method, required_scopes="mcp:write").json()
    assert scope_only["allowed"] is False
    assert scope_only["denial_reasons"] == ["DENIAL_REASON_SCOPE_MISSING"]

    # The same through the validator: a route's checks travel as extra form fields.
    route = ControlPlaneIntrospection(cp, auth_method, {"org_id": ORG, "app_id": APP})
    protect(route).validate_request(["mcp:read"], bearer_request(issued.secret))
    assert route.answers[-1]["allowed"] is True
    wrong_org = ControlPlaneIntrospection(cp, auth_method, {"org_id": OTHER_ORG, "app_id": APP})
    with pytest.raises(InvalidTokenError):
        protect(wrong_org).validate_request(["mcp:read"], bearer_request(issued.secret))


def test_bad_check_parameters_are_invalid_request(control_plane: IntrospectionServer) -> None:
    cp = control_plane
    issued = cp.issue(READ)
    resp = introspect(cp, issued.secret, app_id=APP)  # an app id means nothing without an org
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_request"
    assert "org_id" in resp.json()["error_description"]
    assert issued.secret not in resp.text


# --- 3. inactive tokens ------------------------------------------------------------------------------


def test_revoked_unknown_and_malformed_tokens_are_exactly_inactive(control_plane: IntrospectionServer) -> None:
    cp = control_plane
    revoked = cp.issue(READ)
    validator = ControlPlaneIntrospection(cp)
    protect(validator).validate_request(["mcp:read"], bearer_request(revoked.secret))  # cached now
    cp.revoke(revoked)

    tokens = {
        "revoked": revoked.secret,
        "unknown": unknown_token(),
        "bad checksum": malformed(cp.issue(READ).secret),
        "truncated": revoked.secret[:-4],
        "not a service-account token": "not a service-account token",
    }
    for method in ("client_secret_basic", "client_secret_post"):
        for what, token in tokens.items():
            resp = introspect(cp, token, method)
            assert resp.status_code == 200, (what, resp.text)
            assert resp.json() == {"active": False}, (what, method, resp.text)
            assert resp.text.replace(" ", "") == '{"active":false}'
            assert_no_store(resp)
            with pytest.raises(InvalidTokenError):
                protect(ControlPlaneIntrospection(cp, method)).validate_request(
                    ["mcp:read"], bearer_request(token)
                )
    # With checks too: never `allowed`, only {"active": false}.
    resp = introspect(cp, revoked.secret, org_id=ORG, app_id=APP, required_scopes="mcp:read")
    assert resp.json() == {"active": False}


def test_missing_token_is_invalid_request(control_plane: IntrospectionServer) -> None:
    resp = post(control_plane, {"token_type_hint": "access_token"}, basic=True)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_request"


# --- 4. client authentication ----------------------------------------------------------------------


def _assert_invalid_client(resp: httpx2.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": "invalid_client"}
    assert resp.headers.get("www-authenticate") == "Basic"
    assert_no_store(resp)


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_wrong_or_unknown_client_is_invalid_client(control_plane: IntrospectionServer, auth_method: str) -> None:
    cp = control_plane
    issued = cp.issue(READ)
    wrong_secret = "wrong-" + uuid.uuid4().hex
    SECRETS.append(wrong_secret)
    for client_id, secret in ((CLIENT_ID, wrong_secret), ("no-such-client", cp.client_secret)):
        validator = ControlPlaneIntrospection(cp, auth_method, client_id=client_id, client_secret=secret)
        # Authlib's client returns the response as it is (introspect_token does not raise) ...
        with validator.client() as client:
            _assert_invalid_client(client.introspect_token(cp.url, token=issued.secret))
        # ... and the validator, as Authlib's docs write it (raise_for_status), lets httpx2's
        # HTTPStatusError through ResourceProtector: the resource server answers 5xx, not 401.
        with pytest.raises(httpx2.HTTPStatusError) as raised:
            protect(validator).validate_request(["mcp:read"], bearer_request(issued.secret))
        assert raised.value.response.status_code == 401
        assert validator.answers == []


def test_no_client_credentials_is_invalid_client(control_plane: IntrospectionServer) -> None:
    cp = control_plane
    issued = cp.issue(READ)
    # Authlib's "none" method: a client_id in the form, no secret.
    with OAuth2Client(client_id=CLIENT_ID, token_endpoint_auth_method="none", verify=cp.verify) as c:
        _assert_invalid_client(c.introspect_token(cp.url, token=issued.secret))
    # No credential at all.
    _assert_invalid_client(post(cp, {"token": issued.secret}))
    # An unusable Authorization header is no credential either.
    _assert_invalid_client(
        post(cp, {"token": issued.secret}, headers={"Authorization": "Bearer " + issued.secret})
    )
    # Both ways at once is a bad request (RFC 6749 §2.3: one method per request).
    both = post(
        cp, {"token": issued.secret, "client_id": CLIENT_ID, "client_secret": cp.client_secret}, basic=True
    )
    assert both.status_code == 400 and both.json()["error"] == "invalid_request", both.text
    # The right credentials still work after all that.
    assert introspect(cp, issued.secret).json()["active"] is True


def test_get_is_method_not_allowed(control_plane: IntrospectionServer) -> None:
    cp = control_plane
    with httpx2.Client(verify=cp.verify, timeout=10) as http:
        resp = http.get(cp.url)
    assert resp.status_code == 405
    assert resp.headers.get("allow") == "POST"
    assert_no_store(resp)


# --- 6. no secret in the server's log (last in each server's group) ---------------------------------


def test_zz_no_secret_in_server_log(control_plane: IntrospectionServer) -> None:
    log = control_plane.log()
    assert "listening" in log  # the log is the server's
    leaked = [s for s in SECRETS if s and s in log]
    assert leaked == [], "secrets in the server log"
    assert "emb_sa_" not in log


# --- 5. storage unavailable ------------------------------------------------------------------------


def _assert_unavailable(resp: httpx2.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json() == {"error": "temporarily_unavailable"}
    assert_no_store(resp)


def test_storage_never_reachable_is_temporarily_unavailable() -> None:
    """PostgreSQL at a closed port: the server listens, NOT_SERVING, then gives up and exits."""
    with tempfile.TemporaryDirectory() as data_dir:
        cp = launch(data_dir, database_url="postgres://postgres@127.0.0.1:1/none")
        try:
            answers = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and cp.proc.poll() is None:
                try:
                    answers.append(post(cp, {"token": unknown_token()}, basic=True))
                except httpx2.TransportError:
                    break  # it gave up and exited
                time.sleep(0.2)
            assert answers, f"no answer before the server exited: {cp.log()}"
            for resp in answers:
                _assert_unavailable(resp)
            # The caller is authenticated first: storage's state is told to clients only.
            if cp.proc.poll() is None:
                anonymous = post(cp, {"token": unknown_token()})
                assert anonymous.status_code == 401, anonymous.text
                assert anonymous.json() == {"error": "invalid_client"}
        finally:
            cp.stop()
        assert not any(s in cp.log() for s in SECRETS)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_storage_lost_after_start_is_temporarily_unavailable(backend: str) -> None:
    database = create_database() if backend == "postgres" else None
    with tempfile.TemporaryDirectory() as data_dir:
        # No cache: every introspection asks storage.
        cp = launch(
            data_dir,
            database_url=database.url if database else None,
            extra=["--introspection-cache-capacity", "0"],
        )
        try:
            wait_ready(cp)
            seen = cp.issue(READ)
            assert introspect(cp, seen.secret).json()["active"] is True
            never_seen = cp.issue(READ)

            if database is not None:
                psql(database.admin_url, f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS false')
                psql(
                    database.admin_url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE datname = '{database.name}'",
                )
            else:
                db = Path(data_dir, "service-accounts.db")
                assert db.exists(), sorted(os.listdir(data_dir))
                for path in Path(data_dir).glob("service-accounts.db*"):
                    with open(path, "r+b") as f:
                        f.write(b"\xff" * 4096)  # not a database any more

            # Storage is gone once psql has returned (SQLite: every query now fails), so no
            # answer may be "inactive"; a valid token may at most be answered active while the
            # server catches up. Then all three are 503.
            valid = (seen.secret, never_seen.secret)
            deadline = time.monotonic() + 15
            while True:
                answers = [
                    (token, introspect(cp, token, method))
                    for token in (*valid, unknown_token())
                    for method in ("client_secret_basic", "client_secret_post")
                ]
                for token, resp in answers:
                    assert resp.json() != {"active": False}, (token in valid, resp.text)
                    assert resp.status_code == 503 or token in valid, resp.text
                if all(resp.status_code == 503 for _, resp in answers):
                    break
                assert time.monotonic() < deadline, (
                    [resp.text for _, resp in answers],
                    cp.log()[-3000:],
                )
                time.sleep(0.2)
            for _, resp in answers:
                _assert_unavailable(resp)
            # The validator refuses (it raises); it never accepts a token it could not check.
            with pytest.raises(httpx2.HTTPStatusError):
                protect(ControlPlaneIntrospection(cp)).validate_request(
                    ["mcp:read"], bearer_request(never_seen.secret)
                )

            if database is not None:
                # Storage back: answers come back (readiness is polled).
                psql(database.admin_url, f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS true')
                deadline = time.monotonic() + 30
                while introspect(cp, never_seen.secret).status_code == 503:
                    assert time.monotonic() < deadline, "did not recover"
                    time.sleep(0.2)
                assert introspect(cp, never_seen.secret).json()["active"] is True
            log = cp.log()
            assert not any(s in log for s in SECRETS), "secrets in the server log"
        finally:
            cp.stop()
            if database is not None:
                database.drop()
