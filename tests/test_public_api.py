"""The public surface of qlam_hpc: its names, its import cost, and its error classes."""

from __future__ import annotations

import ast
import inspect
import pickle
import subprocess
import sys

import pytest

import qlam_hpc
from qlam_hpc import _errors

PUBLIC = [
    "AccessDenied",
    "ApiError",
    "ApiSettings",
    "ApiUnreachable",
    "AsyncQlamClient",
    "AuthError",
    "CacheError",
    "ConfigurationError",
    "DeviceCodeExpired",
    "FileStore",
    "IdentityProviderUnreachable",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTaskDefinition",
    "InvalidTokenResponse",
    "LockTimeout",
    "LoginRequired",
    "NotFound",
    "OAuthError",
    "Page",
    "QlamAuth",
    "QlamClient",
    "QlamError",
    "QlamRequestsAuth",
    "RateLimited",
    "RedisStore",
    "RetryPolicy",
    "Secret",
    "SecretStoreUnreachable",
    "Settings",
    "SubjectTokenError",
    "Task",
    "TaskCancelled",
    "TaskDefinition",
    "TaskFailed",
    "TaskStatus",
    "TlsError",
    "Token",
    "TokenLifetimeTooShort",
    "TokenProvider",
    "TokenResult",
    "TokenStore",
    "UnauthorizedClient",
    "UnsafeCache",
    "UnsupportedGrantType",
    "WaitTimeout",
    "__version__",
    "job_time_left",
]

EXIT_CODES = {
    "QlamError": 1,
    "ConfigurationError": 3,
    "TokenLifetimeTooShort": 3,
    "AuthError": 1,
    "OAuthError": 4,
    "InvalidClient": 4,
    "UnauthorizedClient": 4,
    "AccessDenied": 4,
    "InvalidRequest": 4,
    "InvalidGrant": 4,
    "InvalidScope": 4,
    "UnsupportedGrantType": 4,
    "IdentityProviderUnreachable": 5,
    "RateLimited": 6,
    "InvalidTokenResponse": 7,
    "LoginRequired": 16,
    "DeviceCodeExpired": 17,
    "CacheError": 8,
    "UnsafeCache": 8,
    "LockTimeout": 9,
    "TaskFailed": 10,
    "TaskCancelled": 11,
    "WaitTimeout": 12,
    "ApiError": 13,
    "InvalidTaskDefinition": 13,
    "NotFound": 13,
    "ApiUnreachable": 14,
    "SecretStoreUnreachable": 15,
    "TlsError": 18,
    "SubjectTokenError": 19,
}

HEAVY = {"httpx", "click", "rich", "pydantic"}


def _error_classes() -> list[type]:
    return [
        value for value in vars(_errors).values() if inspect.isclass(value) and issubclass(value, _errors.QlamError)
    ]


def _instance(cls: type) -> _errors.QlamError:
    """One realistic instance of each error class."""
    if issubclass(cls, _errors.OAuthError):
        return cls(cls.code, "Unauthorized", 401, "https://idp.example/oauth/token")
    if cls is _errors.TokenLifetimeTooShort:
        return cls(7200.0, 3600.0)
    if cls is _errors.RateLimited:
        return cls("identity provider is rate limiting token requests (HTTP 429)", 30.0)
    if issubclass(cls, _errors.TaskFailed):
        return cls("5f0c", "Failed", ["execution failed"])
    if issubclass(cls, _errors.ApiError):
        return cls(400, ["programs: at least one"], 1300, "https://api.example/v2/squin-256q/tasks")
    return cls(f"{cls.__name__}: something went wrong in /tmp/cache")


def test_all_is_pinned():
    """__all__ is exactly the documented public names; adding or dropping one is deliberate."""
    assert sorted(qlam_hpc.__all__) == PUBLIC
    assert len(set(qlam_hpc.__all__)) == len(qlam_hpc.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name):
    """Each name in __all__ is importable from qlam_hpc."""
    assert getattr(qlam_hpc, name) is not None


def test_dir_lists_the_public_names():
    """dir(qlam_hpc) shows the public surface, for completion in notebooks."""
    assert dir(qlam_hpc) == PUBLIC


def test_unknown_name_is_an_attribute_error():
    """A name that is not public raises AttributeError, as for any module."""
    with pytest.raises(AttributeError, match="no attribute 'fetch_token'"):
        qlam_hpc.fetch_token  # noqa: B018
    assert not hasattr(qlam_hpc, "_not_here")


def test_version_is_a_string():
    """__version__ is a dotted version string."""
    assert isinstance(qlam_hpc.__version__, str)
    assert qlam_hpc.__version__[0].isdigit()


def test_public_names_are_the_implementation_objects():
    """The public names are the same objects the private modules define (no copies)."""
    from qlam_hpc._settings import Settings
    from qlam_hpc._stores._file import FileStore
    from qlam_hpc._tokens import Token

    assert (qlam_hpc.FileStore, qlam_hpc.Settings, qlam_hpc.Token) == (FileStore, Settings, Token)
    assert qlam_hpc.InvalidClient is _errors.InvalidClient


def _imported_after(statement: str) -> list[str]:
    code = f"{statement}; import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout)


def test_import_is_cheap():
    """``import qlam_hpc`` loads none of httpx, click, rich or pydantic."""
    assert _imported_after("import qlam_hpc") == []


def test_the_tasks_client_is_loaded_on_first_use():
    """QlamClient and the models load pydantic and httpx only when used; requests never unless asked."""
    loaded = _imported_after("import qlam_hpc; qlam_hpc.QlamClient; qlam_hpc.Task")
    assert {"httpx", "pydantic"} <= set(loaded)
    code = "import qlam_hpc, sys; qlam_hpc.AsyncQlamClient; qlam_hpc.QlamClient; print('requests' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_warm_path_names_are_cheap():
    """Settings, Token, FileStore and the errors are usable without loading httpx or the CLI stack."""
    statement = "import qlam_hpc; qlam_hpc.Settings; qlam_hpc.Token; qlam_hpc.FileStore; qlam_hpc.InvalidClient"
    assert _imported_after(statement) == []


def test_the_import_check_sees_heavy_modules():
    """The import-cost check does notice a heavy import (so an empty answer means something)."""
    assert "httpx" in _imported_after("import qlam_hpc, httpx")


def test_every_error_class_is_exported():
    """Every error class defined in _errors is part of the public surface."""
    assert {cls.__name__ for cls in _error_classes()} == set(EXIT_CODES)
    assert set(EXIT_CODES) <= set(qlam_hpc.__all__)


@pytest.mark.parametrize("name", sorted(EXIT_CODES))
def test_error_is_a_qlam_error_with_its_exit_code(name):
    """Each error is a QlamError and carries the exit code the CLI documents for its branch."""
    cls = getattr(qlam_hpc, name)
    assert issubclass(cls, qlam_hpc.QlamError)
    assert issubclass(cls, Exception)
    assert type(cls.exit_code) is int
    assert cls.exit_code == EXIT_CODES[name]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_error_pickles_with_its_message(cls):
    """Every error survives pickling (multiprocessing) with the same class, message and data."""
    error = _instance(cls)
    try:
        raise error
    except _errors.QlamError as raised:
        copy = pickle.loads(pickle.dumps(raised))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert copy.message == error.message
    assert copy.exit_code == error.exit_code
    for attribute in (
        "error",
        "description",
        "status",
        "url",
        "retry_after",
        "min_ttl",
        "lifetime",
        "task_id",
        "reasons",
        "messages",
        "code",
    ):
        assert getattr(copy, attribute, None) == getattr(error, attribute, None)
