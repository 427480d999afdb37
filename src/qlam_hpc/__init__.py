"""qlam-hpc: shared OAuth2 M2M tokens and a QLAM tasks client for HPC batch jobs.

The public names are loaded on first use, so ``import qlam_hpc`` stays cheap
for the warm ``qlam-hpc token`` path and for batch scripts that only need a token.
"""

from __future__ import annotations

from . import _errors
from ._version import __version__

__all__ = [
    "__version__",
    "TokenProvider",
    "TokenResult",
    "Token",
    "Settings",
    "Secret",
    "RetryPolicy",
    "TokenStore",
    "FileStore",
    "RedisStore",
    "QlamAuth",
    "job_time_left",
    # the tasks API
    "QlamClient",
    "AsyncQlamClient",
    "ApiSettings",
    "Task",
    "TaskStatus",
    "TaskDefinition",
    "Page",
    "QlamRequestsAuth",
]
# Every error class is public; _errors lists them (it is loaded by any use of qlam-hpc anyway).
__all__ += [name for name in _errors.__all__ if name != "oauth_error"]

_HOMES = {
    "TokenProvider": "._provider",
    "TokenResult": "._provider",
    "Token": "._tokens",
    "Settings": "._settings",
    "Secret": "._settings",
    "RetryPolicy": "._settings",
    "TokenStore": "._stores._base",
    "FileStore": "._stores._file",
    "RedisStore": "._stores._redis",
    "job_time_left": "._walltime",
    "QlamAuth": "._auth",
    "QlamClient": "._api._client",
    "AsyncQlamClient": "._api._async_client",
    "ApiSettings": "._api._settings",
    "Task": "._api._models",
    "TaskStatus": "._api._models",
    "TaskDefinition": "._api._models",
    "Page": "._api._models",
    # requests is not a dependency: imported only when this name is used.
    "QlamRequestsAuth": "._api._requests_auth",
}


def __getattr__(name: str) -> object:
    import importlib

    if name in _HOMES:
        module = importlib.import_module(_HOMES[name], __name__)
    elif name in __all__:
        module = importlib.import_module("._errors", __name__)
    else:
        raise AttributeError(f"module 'qlam_hpc' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


TYPE_CHECKING = False  # typing itself costs the warm token path milliseconds
if TYPE_CHECKING:  # pragma: no cover
    from ._api._async_client import AsyncQlamClient
    from ._api._client import QlamClient
    from ._api._models import Page, Task, TaskDefinition, TaskStatus
    from ._api._requests_auth import QlamRequestsAuth
    from ._api._settings import ApiSettings
    from ._auth import QlamAuth
    from ._errors import *  # noqa: F403
    from ._provider import TokenProvider, TokenResult
    from ._secrets import Secret
    from ._settings import RetryPolicy, Settings
    from ._stores._base import TokenStore
    from ._stores._file import FileStore
    from ._stores._redis import RedisStore
    from ._tokens import Token
    from ._walltime import job_time_left
