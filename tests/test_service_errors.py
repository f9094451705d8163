"""Every service error class has one gRPC status code, through the one mapping in service.errors."""

from __future__ import annotations

import grpc
import pytest

from service import errors
from service.errors import CODE_NUMBERS, STATUS_CODES, ServiceError, status_name


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


ERROR_CLASSES = [
    ServiceError,
    *_all_subclasses(ServiceError),
    errors.SettingsError,
    errors.ModelLoadError,
    errors.StateDirError,
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_has_a_real_status_code(cls: type) -> None:
    if cls is ServiceError:
        return
    name = status_name(cls)
    assert any(base in STATUS_CODES for base in cls.__mro__), f"{cls.__name__} is not mapped"
    assert name in grpc.StatusCode.__members__
    assert CODE_NUMBERS[name] == grpc.StatusCode[name].value[0]


def test_every_class_defined_in_the_module_is_covered() -> None:
    defined = {
        v
        for v in vars(errors).values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__
    }
    assert defined <= set(ERROR_CLASSES)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.EmptyRequest, "INVALID_ARGUMENT"),
        (errors.SessionIdTooLong, "INVALID_ARGUMENT"),
        (errors.TokenOutOfRange, "INVALID_ARGUMENT"),
        (errors.UnknownSymbol, "INVALID_ARGUMENT"),
        (errors.TooManyTokens, "INVALID_ARGUMENT"),
        (errors.BadSampling, "INVALID_ARGUMENT"),
        (errors.NothingToPredictFrom, "INVALID_ARGUMENT"),
        (errors.SessionNotFound, "NOT_FOUND"),
        (errors.CapacityExhausted, "RESOURCE_EXHAUSTED"),
        (errors.QuotaExhausted, "RESOURCE_EXHAUSTED"),
        (errors.MalformedMessage, "INVALID_ARGUMENT"),
        (errors.Unauthenticated, "UNAUTHENTICATED"),
        (errors.ShuttingDown, "UNAVAILABLE"),
        (errors.SessionConflict, "ABORTED"),
        (errors.StoreUnavailable, "UNAVAILABLE"),
        (errors.StoreMismatch, "FAILED_PRECONDITION"),
        (errors.NoHeadGraph, "FAILED_PRECONDITION"),
        (errors.Internal, "INTERNAL"),
    ],
)
def test_codes(cls: type, code: str) -> None:
    assert status_name(cls("x")) == code


def test_unmapped_exceptions_are_internal() -> None:
    assert status_name(ValueError("x")) == "INTERNAL"


def test_code_numbers_match_grpc() -> None:
    for code in grpc.StatusCode:
        assert CODE_NUMBERS[code.name] == code.value[0]
