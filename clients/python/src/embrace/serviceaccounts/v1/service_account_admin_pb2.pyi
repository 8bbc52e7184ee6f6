import datetime

from embrace.serviceaccounts.v1 import resources_pb2 as _resources_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateServiceAccountRequest(_message.Message):
    __slots__ = ("display_name", "description", "app_access")
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    APP_ACCESS_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    description: str
    app_access: _resources_pb2.AppAccess
    def __init__(self, display_name: _Optional[str] = ..., description: _Optional[str] = ..., app_access: _Optional[_Union[_resources_pb2.AppAccess, _Mapping]] = ...) -> None: ...

class CreateServiceAccountResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class GetServiceAccountRequest(_message.Message):
    __slots__ = ("service_account_id",)
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    def __init__(self, service_account_id: _Optional[str] = ...) -> None: ...

class GetServiceAccountResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class ListServiceAccountsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListServiceAccountsResponse(_message.Message):
    __slots__ = ("service_accounts", "next_page_token")
    SERVICE_ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service_accounts: _containers.RepeatedCompositeFieldContainer[_resources_pb2.ServiceAccount]
    next_page_token: str
    def __init__(self, service_accounts: _Optional[_Iterable[_Union[_resources_pb2.ServiceAccount, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateServiceAccountRequest(_message.Message):
    __slots__ = ("service_account", "update_mask")
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateServiceAccountResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class DeleteServiceAccountRequest(_message.Message):
    __slots__ = ("service_account_id",)
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    def __init__(self, service_account_id: _Optional[str] = ...) -> None: ...

class DeleteServiceAccountResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetAppAccessRequest(_message.Message):
    __slots__ = ("service_account_id", "app_access")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ACCESS_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    app_access: _resources_pb2.AppAccess
    def __init__(self, service_account_id: _Optional[str] = ..., app_access: _Optional[_Union[_resources_pb2.AppAccess, _Mapping]] = ...) -> None: ...

class SetAppAccessResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class GrantAppAccessRequest(_message.Message):
    __slots__ = ("service_account_id", "app_ids")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_IDS_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    app_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_account_id: _Optional[str] = ..., app_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GrantAppAccessResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class RevokeAppAccessRequest(_message.Message):
    __slots__ = ("service_account_id", "app_ids")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    APP_IDS_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    app_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_account_id: _Optional[str] = ..., app_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RevokeAppAccessResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("service_account_id", "display_name", "scopes", "expire_time", "allowed_cidrs")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    expire_time: _timestamp_pb2.Timestamp
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_account_id: _Optional[str] = ..., display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowed_cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: _resources_pb2.Token
    secret: str
    def __init__(self, token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("service_account_id", "page_size", "page_token")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    page_size: int
    page_token: str
    def __init__(self, service_account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens", "next_page_token")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Token]
    next_page_token: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[_resources_pb2.Token, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("service_account_id", "token_id")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    token_id: str
    def __init__(self, service_account_id: _Optional[str] = ..., token_id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: _resources_pb2.Token
    def __init__(self, token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ...) -> None: ...

class DisableServiceAccountRequest(_message.Message):
    __slots__ = ("service_account_id",)
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    def __init__(self, service_account_id: _Optional[str] = ...) -> None: ...

class DisableServiceAccountResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class EnableServiceAccountRequest(_message.Message):
    __slots__ = ("service_account_id",)
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    def __init__(self, service_account_id: _Optional[str] = ...) -> None: ...

class EnableServiceAccountResponse(_message.Message):
    __slots__ = ("service_account",)
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    service_account: _resources_pb2.ServiceAccount
    def __init__(self, service_account: _Optional[_Union[_resources_pb2.ServiceAccount, _Mapping]] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("service_account_id", "token_id", "grace_period", "expire_time")
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    token_id: str
    grace_period: _duration_pb2.Duration
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, service_account_id: _Optional[str] = ..., token_id: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateTokenResponse(_message.Message):
    __slots__ = ("token", "secret", "previous_token")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: _resources_pb2.Token
    secret: str
    previous_token: _resources_pb2.Token
    def __init__(self, token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ..., secret: _Optional[str] = ..., previous_token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ...) -> None: ...

class UpdateTokenRequest(_message.Message):
    __slots__ = ("token", "update_mask")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    token: _resources_pb2.Token
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: _resources_pb2.Token
    def __init__(self, token: _Optional[_Union[_resources_pb2.Token, _Mapping]] = ...) -> None: ...

class ListExpiringTokensRequest(_message.Message):
    __slots__ = ("within", "page_size", "page_token")
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    within: _duration_pb2.Duration
    page_size: int
    page_token: str
    def __init__(self, within: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExpiringTokensResponse(_message.Message):
    __slots__ = ("tokens", "next_page_token")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Token]
    next_page_token: str
    def __init__(self, tokens: _Optional[_Iterable[_Union[_resources_pb2.Token, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTokenPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTokenPolicyResponse(_message.Message):
    __slots__ = ("token_policy",)
    TOKEN_POLICY_FIELD_NUMBER: _ClassVar[int]
    token_policy: _resources_pb2.TokenPolicy
    def __init__(self, token_policy: _Optional[_Union[_resources_pb2.TokenPolicy, _Mapping]] = ...) -> None: ...

class UpdateTokenPolicyRequest(_message.Message):
    __slots__ = ("token_policy", "update_mask")
    TOKEN_POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    token_policy: _resources_pb2.TokenPolicy
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, token_policy: _Optional[_Union[_resources_pb2.TokenPolicy, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateTokenPolicyResponse(_message.Message):
    __slots__ = ("token_policy",)
    TOKEN_POLICY_FIELD_NUMBER: _ClassVar[int]
    token_policy: _resources_pb2.TokenPolicy
    def __init__(self, token_policy: _Optional[_Union[_resources_pb2.TokenPolicy, _Mapping]] = ...) -> None: ...

class ListScopesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListScopesResponse(_message.Message):
    __slots__ = ("scopes",)
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    scopes: _containers.RepeatedCompositeFieldContainer[_resources_pb2.Scope]
    def __init__(self, scopes: _Optional[_Iterable[_Union[_resources_pb2.Scope, _Mapping]]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("audit_events", "next_page_token")
    AUDIT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audit_events: _containers.RepeatedCompositeFieldContainer[_resources_pb2.AuditEvent]
    next_page_token: str
    def __init__(self, audit_events: _Optional[_Iterable[_Union[_resources_pb2.AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
