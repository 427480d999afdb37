"""The QLAM API's protocol without I/O: building requests, reading answers, retry and
wait timing, reassembling paged results.

``QlamClient`` and ``AsyncQlamClient`` are thin loops around this module, so
every rule about the API is written once and tested without a network
(as ``_oauth.py`` does for the identity provider). So is the CLI's single-request
path (``_light``), which is why this module imports neither pydantic nor httpx: a
``qlam-hpc api GET`` pays for neither.
"""

from __future__ import annotations

import json
import time
from collections import namedtuple
from collections.abc import Mapping
from urllib.parse import quote

from .._errors import (
    ApiError,
    ApiUnreachable,
    ConfigurationError,
    InvalidTaskDefinition,
    NotFound,
    QlamError,
    TaskCancelled,
    TaskFailed,
    WaitTimeout,
)
from .._settings import RetryPolicy
from ._settings import ApiSettings

# Neither typing nor dataclasses at run time: they bring inspect, ast and a dozen more
# module files into every light-path process.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import random
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from ._models import Task

#: The statuses a task never leaves. ``Completed`` is the only success.
TERMINAL = frozenset({"Completed", "Cancelled", "PayloadProcessingError", "Failed"})
FAILURES = frozenset({"PayloadProcessingError", "Failed"})

#: Answers worth another try: the server or a proxy in front of it is busy or restarting.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_SORT = "created_date,desc"
RESULTS_SORT = "subtask_order,asc"
OCTET_STREAM = "application/octet-stream"


class ApiRequest(
    namedtuple(
        "_ApiRequestFields",
        (
            "method",
            "path",
            "params",  # tuple of (name, value) pairs
            "json",  # a JSON body, or None
            "headers",  # tuple of (name, value) pairs
            "idempotent",
            "creates",  # a 400 answer means an invalid task definition
            "content",  # bytes | None: a raw body, for ``QlamClient.request``
        ),
        defaults=((), None, (), True, False, None),
    )
):
    """One call: ``path`` is relative to the base URL. ``idempotent`` requests are retried
    after connection failures and busy answers; others only when the server surely did
    not act (the connection never opened, or HTTP 429)."""

    __slots__ = ()


#: Methods HTTP defines as idempotent: repeating one has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
CHUNK = 1 << 16


def httpx_arguments(request: ApiRequest) -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client.build_request``."""
    arguments: dict[str, Any] = {"method": request.method, "url": request.path}
    if request.params:
        arguments["params"] = list(request.params)
    if request.json is not None:
        arguments["json"] = request.json
    if request.content is not None:
        arguments["content"] = request.content
    if request.headers:
        arguments["headers"] = dict(request.headers)
    return arguments


def raw_request(
    method: str,
    path: str,
    *,
    params: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> ApiRequest:
    """A request for any path of the API; only a path, so the token never goes to another host."""
    method = method.upper()
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"{path!r} is not a path on the API (it must start with one '/')")
    if isinstance(params, Mapping):
        params = list(params.items())
    return ApiRequest(
        method,
        path,
        params=tuple((str(k), str(v)) for k, v in params or ()),
        headers=tuple((headers or {}).items()),
        content=content,
        idempotent=method in IDEMPOTENT_METHODS,
    )


# --- building requests ------------------------------------------------------------------------


def task_path(settings: ApiSettings, task_id: str, *rest: str) -> str:
    """``/v2/{qpu}/tasks/{id}[/rest]``; the id is escaped so it can never leave its segment."""
    task_id = str(task_id)
    if not task_id.strip() or task_id in (".", ".."):
        raise ValueError(f"{task_id!r} is not a task id")
    return "/".join((settings.tasks_path, quote(task_id, safe=""), *rest))


def create_task(settings: ApiSettings, body: Mapping[str, Any]) -> ApiRequest:
    return ApiRequest("POST", settings.tasks_path, json=dict(body), idempotent=False, creates=True)


def list_tasks(
    settings: ApiSettings,
    *,
    page: int = 0,
    size: int = 10,
    sort: str | None = None,
    group_ids: Iterable[str] = (),
) -> ApiRequest:
    if page < 0 or size < 1:
        raise ValueError("page must be >= 0 and size >= 1")
    params = [("page", str(page)), ("size", str(size)), ("sort", sort or DEFAULT_SORT)]
    params += [("group_id", str(group)) for group in group_ids]
    return ApiRequest("GET", settings.tasks_path, params=tuple(params))


def get_task(settings: ApiSettings, task_id: str) -> ApiRequest:
    return ApiRequest("GET", task_path(settings, task_id))


def cancel_task(settings: ApiSettings, task_id: str) -> ApiRequest:
    # Cancelling twice has the same effect as once (the second is a 409 on a terminal
    # task, which the caller sees), so PUT is safe to repeat after a lost answer.
    return ApiRequest("PUT", task_path(settings, task_id, "cancel"))


def delete_task(settings: ApiSettings, task_id: str) -> ApiRequest:
    return ApiRequest("DELETE", task_path(settings, task_id))


def task_results(
    settings: ApiSettings,
    task_id: str,
    *,
    page: int = 0,
    size: int = 10,
    sort: str | None = None,
    shots_page: int = 0,
    shots_size: int | None = None,
) -> ApiRequest:
    if page < 0 or size < 1 or shots_page < 0 or (shots_size is not None and shots_size < 1):
        raise ValueError("pages must be >= 0 and sizes >= 1")
    params = [("page", str(page)), ("size", str(size)), ("sort", sort or RESULTS_SORT), ("shots_page", str(shots_page))]
    if shots_size is not None:
        params.append(("shots_size", str(shots_size)))
    return ApiRequest("GET", task_path(settings, task_id, "results"), params=tuple(params))


def download_results(settings: ApiSettings, task_id: str) -> ApiRequest:
    return ApiRequest("GET", task_path(settings, task_id, "results"), headers=(("Accept", OCTET_STREAM),))


def userinfo() -> ApiRequest:
    return ApiRequest("GET", "/userinfo")


def task_body(definition: Any) -> dict[str, Any]:
    """A creation body from a ``TaskDefinition`` (or any pydantic model) or a mapping."""
    if hasattr(definition, "model_dump"):
        body: dict[str, Any] = definition.model_dump(mode="json", exclude_none=True)
        return body
    if isinstance(definition, Mapping):
        return dict(definition)
    raise TypeError(f"a task definition must be a TaskDefinition or a mapping, not {type(definition).__name__}")


def creation_body(
    definition: Any, idempotency_key: str | None, attribution: Mapping[str, Any] | None, group: str | None = None
) -> dict[str, Any]:
    """The body of a task creation: the definition as given, the idempotency key in its
    ``user_metadata``, ``attribution`` (None: off) merged into its ``system_metadata``, and
    the default ``group`` (a UUID) as its ``group_id`` when it names none."""
    body = task_body(definition)
    if group is not None and not body.get("group_id"):
        if not _is_uuid(group):
            raise ConfigurationError(
                f"the default group {group!r} (QLAM_GROUP, or group in the QLAM Shell context) is not a UUID: "
                "qlam-hpc cannot look a group up by name; give the group's id"
            )
        body = {**body, "group_id": group}
    if idempotency_key is not None:
        body = with_idempotency_key(body, idempotency_key)
    if attribution is not None:
        from .._log import log
        from ._attribution import with_attribution

        body, attributed = with_attribution(body, attribution)
        if not attributed:
            log("info", "system_metadata is not a JSON object: sent unchanged, without attribution")
    return body


# --- reading answers --------------------------------------------------------------------------


def error_for(status: int, body: bytes, url: str, request: ApiRequest | None = None) -> QlamError:
    """The exception for an error answer: the API's ``{messages, code}`` body when it has one."""
    messages, code = _error_body(body)
    if status >= 500:
        text = "; ".join(messages) if messages else "no message"
        return ApiUnreachable(f"QLAM API {url} answered HTTP {status}: {text}")
    if status == 404:
        return NotFound(status, messages, code, url)
    if status == 400 and request is not None and request.creates:
        return InvalidTaskDefinition(status, messages, code, url)
    return ApiError(status, messages, code, url)


#: Deeper than any answer of the API (a task nests 4 levels; a program in a task's payload a
#: few dozen), and far from the interpreter's recursion limit.
MAX_DEPTH = 256


def parse_answer(body: bytes) -> Any:
    """``json.loads`` within ``MAX_DEPTH`` (the body's size was capped as it was read)."""
    from .._jsonlimits import parse_json

    return parse_json(body, max_bytes=len(body), max_depth=MAX_DEPTH)


def read_json(status: int, content_type: str, body: bytes, url: str) -> Any:
    """The JSON of a 2xx answer; ``None`` for an empty one (204)."""
    from .._jsonlimits import JsonLimitError

    if not body.strip():
        return None
    try:
        return parse_answer(body)
    except JsonLimitError as exc:
        raise ApiError(status, [f"the answer is {exc}; refusing it"], None, url) from None
    except (UnicodeDecodeError, ValueError):
        what = (
            "an HTML page" if "html" in content_type.lower() or body.lstrip()[:1] == b"<" else "a body that is not JSON"
        )
        raise ApiError(
            status, [f"the answer is {what} (is QLAM_API_URL right, or a proxy in the way?)"], None, url
        ) from None


def _error_body(body: bytes) -> tuple[list[str], int | None]:
    from .._jsonlimits import JsonLimitError

    try:
        data = parse_answer(body)
    except JsonLimitError as exc:
        return [f"the answer is {exc}"], None
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict):
        code = data.get("code") if isinstance(data.get("code"), int) else None
        messages = data.get("messages")
        if isinstance(messages, list) and messages:
            return [str(m) for m in messages], code
        for key in ("message", "detail", "error_description", "error"):
            if isinstance(data.get(key), str):
                return [data[key]], code
        return [], code
    text = body.decode("utf-8", "replace").strip()
    if text.lower().startswith(("<!doctype", "<html")):
        return ["an HTML page (a proxy or load balancer in the way?)"], None
    # A short text body is shown as is (one line); a long one would swamp the message.
    return ([" ".join(text.split())[:200]] if text else []), None


def is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304


def redirected(status: int, location: str, url: str) -> ApiError:
    """A redirect, reported and not followed: following it would send the token elsewhere, and
    the API itself never redirects, so one means a wrong ``QLAM_API_URL`` or a proxy's login page."""
    shown = "".join(c for c in location[:200] if c.isprintable()) or "nowhere"
    return ApiError(
        status,
        [f"a redirect to {shown}, not followed (is QLAM_API_URL right, or a proxy in the way?)"],
        None,
        url,
    )


def too_large(status: int, limit: int, url: str) -> ApiError:
    """An answer over ``ApiSettings.max_body``, refused as it streamed in."""
    from .._jsonlimits import format_size

    return ApiError(
        status, [f"the answer is larger than {format_size(limit)} (QLAM_API_MAX_BODY); refusing it"], None, url
    )


def overdue(url: str, seconds: float) -> str:
    """What a request cut at its deadline says (the reason of its ``ApiUnreachable``)."""
    return f"no complete answer within {seconds:g}s (QLAM_API_DEADLINE)"


def unreachable(url: str, exc: BaseException, attempts: int) -> QlamError:
    """What a connection failure that outlasted the retries stands for: ``TlsError`` when TLS
    itself failed (a certificate, https to a plain-http server: no retry fixes those, and
    the message names the setting that does), else ``ApiUnreachable``."""
    from .._tls import failure, unresolved

    tls = failure(exc, url)
    if tls is not None:
        return tls
    reason = unresolved(exc)
    if reason is not None:
        from .._urls import host_of

        host = host_of(url.partition("://")[2])
        return ApiUnreachable(f"QLAM API {url} is unreachable: the host name {host} does not resolve ({reason})")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return ApiUnreachable(f"QLAM API {url} is unreachable{tries} ({describe(exc)})")


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- retry timing -----------------------------------------------------------------------------


class Retry:
    """The retry budget of one call: ``delay()`` after each failure says how long to wait
    before the next attempt, or ``None`` to give up (attempts or deadline spent, or a
    failure it is not safe to repeat)."""

    def __init__(
        self,
        policy: RetryPolicy,
        idempotent: bool = True,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        attempt: int = 0,
        started: float = -1.0,
    ) -> None:
        self.policy, self.idempotent, self.clock, self.rng, self.attempt = policy, idempotent, clock, rng, attempt
        self.started = clock() if started < 0 else started

    def delay(
        self, *, status: int | None = None, headers: Mapping[str, str] | None = None, sent: bool = True
    ) -> float | None:
        """After attempt ``self.attempt + 1`` failed: seconds to wait, or ``None``.

        ``sent=False`` means the request never reached the server (the connection did not
        open), so even a POST is safe to repeat; so is a 429, which the server refused
        before acting. Anything else is repeated only for idempotent requests.
        """
        from .._oauth import backoff_delay, server_wait  # only after a failure: json, email.utils

        self.attempt += 1
        if not self.idempotent and sent and status != 429:
            return None
        now = self.clock()
        asked = server_wait(headers, now) if headers is not None and status in (429, 503) else None
        delay = asked if asked is not None else backoff_delay(self.policy, self.attempt - 1, self.rng)
        if self.attempt >= self.policy.attempts or now - self.started + delay > self.policy.deadline:
            return None
        return delay

    def give_up(self) -> None:
        """Count a failure no retry can fix (a certificate the client does not trust)."""
        self.attempt += 1
        return None


def retrying(delay: float, retry: Retry) -> str:
    return f"retrying in {delay:.1f}s (attempt {retry.attempt + 1} of {retry.policy.attempts})"


# --- idempotent creation ----------------------------------------------------------------------

#: Failures after which a POST may or may not have created the task.
AMBIGUOUS = (ApiUnreachable,)
KEY_FIELD = "idempotency_key"
KEY_SEARCH_SIZE = 100
KEY_SEARCH_PAGES = 20


def with_idempotency_key(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A copy of ``body`` whose ``user_metadata`` (a JSON object string) holds the key.

    ``user_metadata`` is the caller's free text; a key can be added only when it is unset
    or already a JSON object, so anything else is refused rather than overwritten.
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError("an idempotency key must be a non-empty string")
    existing = body.get("user_metadata")
    data: Any = {}
    if existing not in (None, ""):
        try:
            data = json.loads(existing) if isinstance(existing, str) else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ValueError("idempotency_key needs user_metadata unset or a JSON object string")
    copy = dict(body)
    copy["user_metadata"] = json.dumps({**data, KEY_FIELD: key}, separators=(",", ":"), sort_keys=True)
    return copy


def idempotency_key_of(task: Any) -> str | None:
    """The key a task was created with, if its ``user_metadata`` holds one."""
    fields = task if isinstance(task, Mapping) else (getattr(task, "model_extra", None) or {})
    metadata = fields.get("user_metadata")
    if not isinstance(metadata, str):
        return None
    from .._jsonlimits import parse_json

    try:
        data = parse_json(metadata, max_bytes=len(metadata.encode("utf-8", "surrogatepass")))
    except ValueError:  # not JSON, or nested too deep to be ours
        return None
    value = data.get(KEY_FIELD) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def find_idempotency_key(tasks: Iterable[Any], key: str) -> Any:
    return next((task for task in tasks if idempotency_key_of(task) == key), None)


# --- waiting for tasks ------------------------------------------------------------------------


class Waiter:
    """Polls tasks until each reaches a terminal status, or the timeout runs out.

    The poll interval starts at ``poll_interval`` and grows by half each time nothing
    changed, up to ``max_poll_interval``: long tasks cost few requests, and a change
    resets it so a task that is moving is followed closely.
    """

    def __init__(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not task_ids:
            raise ValueError("no task ids to wait for")
        if poll_interval <= 0 or max_poll_interval < poll_interval:
            raise ValueError("poll_interval must be > 0 and <= max_poll_interval")
        self.order = list(dict.fromkeys(str(i) for i in task_ids))
        self.tasks: dict[str, Task] = {}
        self.timeout = timeout
        self._initial = poll_interval
        self._max = max_poll_interval
        self._interval = poll_interval
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._changed = False

    @property
    def pending(self) -> list[str]:
        """Ids not yet seen in a terminal status, in the order given."""
        return [i for i in self.order if i not in self.tasks or not self.tasks[i].terminal]

    def update(self, task: Task) -> bool:
        """Record a polled task; True when its status differs from the last one seen."""
        key = task.id if task.id in self.order else None
        if key is None:
            raise ValueError(f"task {task.id} is not one of the tasks waited for")
        previous = self.tasks.get(key)
        self.tasks[key] = task
        changed = previous is None or previous.status != task.status
        self._changed = self._changed or changed
        return changed

    def next_delay(self) -> float:
        """Seconds until the next poll; raises ``WaitTimeout`` once the timeout has run out."""
        now = self._clock()
        if self._deadline is not None and now >= self._deadline:
            raise self.timeout_error()
        self._interval = self._initial if self._changed else min(self._interval * 1.5, self._max)
        self._changed = False
        if self._deadline is not None:
            return min(self._interval, self._deadline - now)
        return self._interval

    def results(self) -> list[Task]:
        return [self.tasks[i] for i in self.order]

    def timeout_error(self) -> WaitTimeout:
        from .._durations import format_duration

        timeout = self.timeout or 0
        waited = format_duration(timeout) if timeout >= 10 else f"{timeout:g}s"
        pending = self.pending
        shown = ", ".join(f"{i} ({self.tasks[i].status if i in self.tasks else 'unknown'})" for i in pending[:5])
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        error = WaitTimeout(
            f"{len(pending)} of {len(self.order)} task{'s' if len(self.order) != 1 else ''} still running after "
            f"{waited}: {shown}{more}"
        )
        # Callers (the CLI's --json) still want what was seen; not pickled, which is fine.
        error.tasks = [self.tasks[i] for i in self.order if i in self.tasks]  # type: ignore[attr-defined]
        return error


def raise_for_outcome(tasks: Iterable[Task]) -> None:
    """``TaskFailed`` for the first failed task, else ``TaskCancelled`` for the first cancelled one."""
    tasks = list(tasks)
    for task in tasks:
        if task.status in FAILURES:
            raise TaskFailed(task.id, task.status, task.error_reasons)
    for task in tasks:
        if task.status == "Cancelled":
            raise TaskCancelled(task.id, task.status, task.error_reasons)


# --- results ----------------------------------------------------------------------------------


def shot_pages(page: Mapping[str, Any]) -> int:
    """How many shot pages the subtasks of a results page need (1 when one page holds them all)."""
    import math

    needed = 1
    for element in page.get("elements") or ():
        total, size = element.get("shots_total"), element.get("shots_size")
        if isinstance(total, int) and isinstance(size, int) and size > 0:
            needed = max(needed, math.ceil(total / size))
    return needed


def merge_shot_pages(pages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The subtasks of one results page with every shot, from its shot pages 0, 1, ...

    The paging fields ``shots_page`` and ``shots_size`` describe one page only, so they
    are dropped: the result has the shape of a download's ``subtasks``.
    """
    merged: dict[Any, dict[str, Any]] = {}
    for page in pages:
        for element in page.get("elements") or ():
            order = element.get("subtask_order")
            if order in merged:
                merged[order]["shots"].extend(element.get("shots") or ())
            else:
                merged[order] = {k: v for k, v in element.items() if k not in ("shots_page", "shots_size")}
                merged[order]["shots"] = list(element.get("shots") or ())
    return list(merged.values())


def page_is_last(page: Mapping[str, Any]) -> bool:
    """True when no page follows this one (``{"elements", "page", "size", "total"}``)."""
    elements, number, size, total = (
        page.get("elements") or [],
        page.get("page", 0),
        page.get("size", 0),
        page.get("total", 0),
    )
    return not elements or not size or (number + 1) * size >= total


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
