import datetime

from embrace.serviceaccounts.v1 import resources_pb2 as _resources_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InactiveReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INACTIVE_REASON_UNSPECIFIED: _ClassVar[InactiveReason]
    INACTIVE_REASON_MALFORMED: _ClassVar[InactiveReason]
    INACTIVE_REASON_UNKNOWN: _ClassVar[InactiveReason]
    INACTIVE_REASON_REVOKED: _ClassVar[InactiveReason]
    INACTIVE_REASON_EXPIRED: _ClassVar[InactiveReason]
    INACTIVE_REASON_ACCOUNT_DISABLED: _ClassVar[InactiveReason]

class DenialReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENIAL_REASON_UNSPECIFIED: _ClassVar[DenialReason]
    DENIAL_REASON_TOKEN_INACTIVE: _ClassVar[DenialReason]
    DENIAL_REASON_APP_NOT_GRANTED: _ClassVar[DenialReason]
    DENIAL_REASON_SCOPE_MISSING: _ClassVar[DenialReason]
    DENIAL_REASON_ORG_MISMATCH: _ClassVar[DenialReason]
    DENIAL_REASON_CLIENT_IP_NOT_ALLOWED: _ClassVar[DenialReason]
INACTIVE_REASON_UNSPECIFIED: InactiveReason
INACTIVE_REASON_MALFORMED: InactiveReason
INACTIVE_REASON_UNKNOWN: InactiveReason
INACTIVE_REASON_REVOKED: InactiveReason
INACTIVE_REASON_EXPIRED: InactiveReason
INACTIVE_REASON_ACCOUNT_DISABLED: InactiveReason
DENIAL_REASON_UNSPECIFIED: DenialReason
DENIAL_REASON_TOKEN_INACTIVE: DenialReason
DENIAL_REASON_APP_NOT_GRANTED: DenialReason
DENIAL_REASON_SCOPE_MISSING: DenialReason
DENIAL_REASON_ORG_MISMATCH: DenialReason
DENIAL_REASON_CLIENT_IP_NOT_ALLOWED: DenialReason

class IntrospectRequest(_message.Message):
    __slots__ = ("token", "app_id", "required_scopes", "org_id", "client_ip")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_FIELD_NUMBER: _ClassVar[int]
    token: str
    app_id: str
    required_scopes: _containers.RepeatedScalarFieldContainer[str]
    org_id: str
    client_ip: str
    def __init__(self, token: _Optional[str] = ..., app_id: _Optional[str] = ..., required_scopes: _Optional[_Iterable[str]] = ..., org_id: _Optional[str] = ..., client_ip: _Optional[str] = ...) -> None: ...

class IntrospectResponse(_message.Message):
    __slots__ = ("active", "inactive_reason", "org_id", "service_account_id", "service_account_display_name", "token_id", "scopes", "app_access", "expire_time", "allowed", "denial_reason", "missing_scopes", "denial_reasons")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_REASON_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    APP_ACCESS_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    DENIAL_REASON_FIELD_NUMBER: _ClassVar[int]
    MISSING_SCOPES_FIELD_NUMBER: _ClassVar[int]
    DENIAL_REASONS_FIELD_NUMBER: _ClassVar[int]
    active: bool
    inactive_reason: InactiveReason
    org_id: str
    service_account_id: str
    service_account_display_name: str
    token_id: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    app_access: _resources_pb2.AppAccess
    expire_time: _timestamp_pb2.Timestamp
    allowed: bool
    denial_reason: DenialReason
    missing_scopes: _containers.RepeatedScalarFieldContainer[str]
    denial_reasons: _containers.RepeatedScalarFieldContainer[DenialReason]
    def __init__(self, active: bool = ..., inactive_reason: _Optional[_Union[InactiveReason, str]] = ..., org_id: _Optional[str] = ..., service_account_id: _Optional[str] = ..., service_account_display_name: _Optional[str] = ..., token_id: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., app_access: _Optional[_Union[_resources_pb2.AppAccess, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowed: bool = ..., denial_reason: _Optional[_Union[DenialReason, str]] = ..., missing_scopes: _Optional[_Iterable[str]] = ..., denial_reasons: _Optional[_Iterable[_Union[DenialReason, str]]] = ...) -> None: ...
