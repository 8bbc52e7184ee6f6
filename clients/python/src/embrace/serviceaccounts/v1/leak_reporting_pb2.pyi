from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeakOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEAK_OUTCOME_UNSPECIFIED: _ClassVar[LeakOutcome]
    LEAK_OUTCOME_REVOKED: _ClassVar[LeakOutcome]
    LEAK_OUTCOME_ALREADY_INACTIVE: _ClassVar[LeakOutcome]
    LEAK_OUTCOME_UNKNOWN: _ClassVar[LeakOutcome]
    LEAK_OUTCOME_MALFORMED: _ClassVar[LeakOutcome]
LEAK_OUTCOME_UNSPECIFIED: LeakOutcome
LEAK_OUTCOME_REVOKED: LeakOutcome
LEAK_OUTCOME_ALREADY_INACTIVE: LeakOutcome
LEAK_OUTCOME_UNKNOWN: LeakOutcome
LEAK_OUTCOME_MALFORMED: LeakOutcome

class ReportLeakedTokensRequest(_message.Message):
    __slots__ = ("tokens", "source")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, tokens: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class ReportLeakedTokensResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[LeakedTokenResult]
    def __init__(self, results: _Optional[_Iterable[_Union[LeakedTokenResult, _Mapping]]] = ...) -> None: ...

class LeakedTokenResult(_message.Message):
    __slots__ = ("hint", "outcome")
    HINT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    hint: str
    outcome: LeakOutcome
    def __init__(self, hint: _Optional[str] = ..., outcome: _Optional[_Union[LeakOutcome, str]] = ...) -> None: ...
