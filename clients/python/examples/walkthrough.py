#!/usr/bin/env python3
"""The README's grpcurl walkthrough, with the Python client, checking every answer.

Creates a service account with access to the app `checkout-ios`, issues it a token, introspects
the token (allowed in org `acme`; refused with ORG_MISMATCH in another org), revokes it,
introspects it again (inactive: REVOKED) and prints the audit events of the run. Then sends a
request with bad fields and shows the field violations the server returns.

Exits non-zero with a message on the first unexpected answer, so it doubles as a test.

Environment:
  SERVICE_ACCOUNTS_ADDR  host:port of the server, plaintext (default localhost:50051)
  ADMIN_JWT              org-admin JWT for org `acme` (required), for example:
    export ADMIN_JWT=$(cargo run -q -- admin-token --data-dir ./data --org-id acme --user-id alice)
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import List, Optional, Tuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from embrace.serviceaccounts.v1 import resources_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2 as admin_pb2
from embrace.serviceaccounts.v1 import service_account_admin_pb2_grpc as admin_grpc
from embrace.serviceaccounts.v1 import token_introspection_pb2 as introspection_pb2
from embrace.serviceaccounts.v1 import token_introspection_pb2_grpc as introspection_grpc

TIMEOUT_SECONDS = 10.0
ORG = "acme"
OTHER_ORG = "globex"
APP = "checkout-ios"
SCOPES = ["mcp:tools:call", "mcp:read"]

DenialReason = introspection_pb2.DenialReason
InactiveReason = introspection_pb2.InactiveReason


class Failed(Exception):
    """An answer that is not the one the walkthrough expects."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def field_violations(err: grpc.RpcError) -> List[Tuple[str, str]]:
    """The (field, description) pairs of the google.rpc.BadRequest detail of an error, if any."""
    if not isinstance(err, grpc.Call):  # what a call raises is both; rpc_status wants the Call
        return []
    # The google.rpc.Status sent in grpc-status-details-bin (grpcio-status returns it untyped).
    status: Optional[status_pb2.Status] = rpc_status.from_call(err)
    if status is None:
        return []
    violations: List[Tuple[str, str]] = []
    for detail in status.details:  # google.protobuf.Any
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def walkthrough(channel: grpc.Channel, admin_jwt: str) -> None:
    admin = admin_grpc.ServiceAccountAdminStub(channel)
    introspection = introspection_grpc.TokenIntrospectionStub(channel)
    # Every admin call carries the org admin's JWT; TokenIntrospection takes none.
    auth = (("authorization", f"Bearer {admin_jwt}"),)
    run = secrets.token_hex(4)  # display names are unique per org: one fresh name per run

    print("== CreateServiceAccount")
    account = admin.CreateServiceAccount(
        admin_pb2.CreateServiceAccountRequest(
            display_name=f"CI Pipeline {run}",
            app_access=resources_pb2.AppAccess(app_ids=[APP]),
        ),
        metadata=auth,
        timeout=TIMEOUT_SECONDS,
    ).service_account
    print(f"   id={account.service_account_id} name={account.display_name!r} org={account.org_id}")
    expect(account.service_account_id != "", "the created account has no id")
    expect(account.org_id == ORG, f"the account is in org {account.org_id!r}, not {ORG!r}")
    expect(list(account.app_access.app_ids) == [APP], f"app access is {account.app_access}")

    print("== CreateToken")
    created = admin.CreateToken(
        admin_pb2.CreateTokenRequest(
            service_account_id=account.service_account_id,
            display_name="GitHub Actions",
            scopes=SCOPES,
        ),
        metadata=auth,
        timeout=TIMEOUT_SECONDS,
    )
    secret = created.secret  # shown this once; keep it out of logs (only its hint is printed)
    token = created.token
    print(f"   token_id={token.token_id} hint={token.hint} scopes={list(token.scopes)}")
    expect(secret.startswith("emb_sa_"), "the secret does not look like a service-account token")
    expect(sorted(token.scopes) == sorted(SCOPES), f"the token's scopes are {list(token.scopes)}")

    print(f"== Introspect in org {ORG!r}, app {APP!r}, requiring mcp:read")
    answer = introspection.Introspect(
        introspection_pb2.IntrospectRequest(
            token=secret, org_id=ORG, app_id=APP, required_scopes=["mcp:read"]
        ),
        timeout=TIMEOUT_SECONDS,
    )
    print(
        f"   active={answer.active} allowed={answer.allowed} "
        f"account={answer.service_account_display_name!r} scopes={list(answer.scopes)}"
    )
    expect(answer.active and answer.allowed, f"expected active and allowed, got {answer}")
    expect(
        answer.service_account_id == account.service_account_id,
        f"introspection names account {answer.service_account_id!r}",
    )
    expect(answer.token_id == token.token_id, f"introspection names token {answer.token_id!r}")

    print(f"== Introspect in org {OTHER_ORG!r} (another org's app of the same name)")
    answer = introspection.Introspect(
        introspection_pb2.IntrospectRequest(token=secret, org_id=OTHER_ORG, app_id=APP),
        timeout=TIMEOUT_SECONDS,
    )
    print(
        f"   active={answer.active} allowed={answer.allowed} "
        f"denial_reason={DenialReason.Name(answer.denial_reason)}"
    )
    expect(answer.active, "a token of another org is still reported active")
    expect(not answer.allowed, "a token of another org must not be allowed")
    expect(
        answer.denial_reason == DenialReason.DENIAL_REASON_ORG_MISMATCH,
        f"expected DENIAL_REASON_ORG_MISMATCH, got {DenialReason.Name(answer.denial_reason)}",
    )

    print("== RevokeToken")
    revoked = admin.RevokeToken(
        admin_pb2.RevokeTokenRequest(
            service_account_id=account.service_account_id, token_id=token.token_id
        ),
        metadata=auth,
        timeout=TIMEOUT_SECONDS,
    ).token
    print(f"   revoke_time={revoked.revoke_time.ToJsonString()} revoked_by={revoked.revoked_by}")
    expect(revoked.HasField("revoke_time"), "the revoked token has no revoke_time")

    print("== Introspect the revoked token")
    answer = introspection.Introspect(
        introspection_pb2.IntrospectRequest(token=secret), timeout=TIMEOUT_SECONDS
    )
    print(
        f"   active={answer.active} inactive_reason={InactiveReason.Name(answer.inactive_reason)} "
        f"denial_reason={DenialReason.Name(answer.denial_reason)}"
    )
    expect(not answer.active and not answer.allowed, "a revoked token must be inactive")
    expect(
        answer.inactive_reason == InactiveReason.INACTIVE_REASON_REVOKED,
        f"expected INACTIVE_REASON_REVOKED, got {InactiveReason.Name(answer.inactive_reason)}",
    )
    expect(
        answer.denial_reason == DenialReason.DENIAL_REASON_TOKEN_INACTIVE,
        f"expected DENIAL_REASON_TOKEN_INACTIVE, got {DenialReason.Name(answer.denial_reason)}",
    )

    print("== ListAuditEvents (this run's events; the org's are listed oldest first)")
    ours = {account.service_account_id, token.token_id}
    actions = []
    page_token = ""
    while True:
        page = admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=1000, page_token=page_token),
            metadata=auth,
            timeout=TIMEOUT_SECONDS,
        )
        for event in page.audit_events:
            if event.target_id in ours:
                actions.append(event.action)
                print(
                    f"   {event.create_time.ToJsonString()} {event.actor} {event.action} "
                    f"{event.target_type}/{event.target_id}"
                )
        page_token = page.next_page_token
        if not page_token:
            break
    for action in ("service_account.create", "token.create", "token.revoke"):
        expect(action in actions, f"no {action} audit event for this run (saw {actions})")

    print("== Bad input: CreateServiceAccount with a blank name and an invalid app id")
    try:
        admin.CreateServiceAccount(
            admin_pb2.CreateServiceAccountRequest(
                display_name="   ",
                app_access=resources_pb2.AppAccess(app_ids=["checkout ios!"]),
            ),
            metadata=auth,
            timeout=TIMEOUT_SECONDS,
        )
    except grpc.RpcError as err:
        print(f"   {err.code().name}: {err.details()}")
        violations = field_violations(err)
        for field, description in violations:
            print(f"   - {field}: {description}")
        expect(
            err.code() == grpc.StatusCode.INVALID_ARGUMENT,
            f"expected INVALID_ARGUMENT, got {err.code().name}",
        )
        fields = {field for field, _ in violations}
        for field in ("display_name", "app_access.app_ids[0]"):
            expect(field in fields, f"no field violation names {field} (got {sorted(fields)})")
    else:
        raise Failed("an account with a blank name was created")


def main() -> int:
    address = os.environ.get("SERVICE_ACCOUNTS_ADDR", "localhost:50051")
    admin_jwt = os.environ.get("ADMIN_JWT", "").strip()
    if not admin_jwt:
        print(
            "ADMIN_JWT is not set: it must hold an org-admin JWT for org acme, for example\n"
            "  export ADMIN_JWT=$(cargo run -q -- admin-token --data-dir ./data \\\n"
            "      --org-id acme --user-id alice)",
            file=sys.stderr,
        )
        return 2
    print(f"server: {address} (plaintext)")
    with grpc.insecure_channel(address) as channel:
        try:
            walkthrough(channel, admin_jwt)
        except Failed as failed:
            print(f"FAILED: {failed}", file=sys.stderr)
            return 1
        except grpc.RpcError as err:
            print(f"FAILED: unexpected {err.code().name}: {err.details()}", file=sys.stderr)
            for field, description in field_violations(err):
                print(f"  - {field}: {description}", file=sys.stderr)
            return 1
    print("OK: every answer was as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
