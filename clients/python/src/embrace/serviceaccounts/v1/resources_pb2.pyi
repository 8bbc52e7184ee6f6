import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppAccess(_message.Message):
    __slots__ = ("all_apps", "app_ids")
    ALL_APPS_FIELD_NUMBER: _ClassVar[int]
    APP_IDS_FIELD_NUMBER: _ClassVar[int]
    all_apps: bool
    app_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, all_apps: bool = ..., app_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ServiceAccount(_message.Message):
    __slots__ = ("service_account_id", "org_id", "display_name", "description", "app_access", "create_time", "update_time", "created_by", "state", "etag", "last_used_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ServiceAccount.State]
        STATE_ACTIVE: _ClassVar[ServiceAccount.State]
        STATE_DISABLED: _ClassVar[ServiceAccount.State]
    STATE_UNSPECIFIED: ServiceAccount.State
    STATE_ACTIVE: ServiceAccount.State
    STATE_DISABLED: ServiceAccount.State
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    APP_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    service_account_id: str
    org_id: str
    display_name: str
    description: str
    app_access: AppAccess
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    created_by: str
    state: ServiceAccount.State
    etag: str
    last_used_time: _timestamp_pb2.Timestamp
    def __init__(self, service_account_id: _Optional[str] = ..., org_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., app_access: _Optional[_Union[AppAccess, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., state: _Optional[_Union[ServiceAccount.State, str]] = ..., etag: _Optional[str] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("token_id", "service_account_id", "display_name", "scopes", "create_time", "created_by", "expire_time", "revoke_time", "revoked_by", "last_used_time", "hint", "revoke_reason", "previous_token_id", "allowed_cidrs", "last_used_app_id", "last_used_client_ip")
    class RevokeReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REVOKE_REASON_UNSPECIFIED: _ClassVar[Token.RevokeReason]
        REVOKE_REASON_ADMIN: _ClassVar[Token.RevokeReason]
        REVOKE_REASON_ROTATED: _ClassVar[Token.RevokeReason]
        REVOKE_REASON_LEAKED: _ClassVar[Token.RevokeReason]
        REVOKE_REASON_ACCOUNT_DELETED: _ClassVar[Token.RevokeReason]
    REVOKE_REASON_UNSPECIFIED: Token.RevokeReason
    REVOKE_REASON_ADMIN: Token.RevokeReason
    REVOKE_REASON_ROTATED: Token.RevokeReason
    REVOKE_REASON_LEAKED: Token.RevokeReason
    REVOKE_REASON_ACCOUNT_DELETED: Token.RevokeReason
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_REASON_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_CIDRS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_APP_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    service_account_id: str
    display_name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    created_by: str
    expire_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    revoked_by: str
    last_used_time: _timestamp_pb2.Timestamp
    hint: str
    revoke_reason: Token.RevokeReason
    previous_token_id: str
    allowed_cidrs: _containers.RepeatedScalarFieldContainer[str]
    last_used_app_id: str
    last_used_client_ip: str
    def __init__(self, token_id: _Optional[str] = ..., service_account_id: _Optional[str] = ..., display_name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_by: _Optional[str] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hint: _Optional[str] = ..., revoke_reason: _Optional[_Union[Token.RevokeReason, str]] = ..., previous_token_id: _Optional[str] = ..., allowed_cidrs: _Optional[_Iterable[str]] = ..., last_used_app_id: _Optional[str] = ..., last_used_client_ip: _Optional[str] = ...) -> None: ...

class TokenPolicy(_message.Message):
    __slots__ = ("max_lifetime", "default_lifetime")
    MAX_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    max_lifetime: _duration_pb2.Duration
    default_lifetime: _duration_pb2.Duration
    def __init__(self, max_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., default_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Scope(_message.Message):
    __slots__ = ("name", "description", "requires")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    requires: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., requires: _Optional[_Iterable[str]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("audit_event_id", "org_id", "actor", "action", "target_type", "target_id", "request_id", "create_time", "details")
    AUDIT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_TYPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    audit_event_id: str
    org_id: str
    actor: str
    action: str
    target_type: str
    target_id: str
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    details: str
    def __init__(self, audit_event_id: _Optional[str] = ..., org_id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target_type: _Optional[str] = ..., target_id: _Optional[str] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[str] = ...) -> None: ...
