"""``QlamClient``: the QLAM tasks API over one pooled ``httpx.Client``.

The protocol lives in ``_requests`` (pure); this module only sends, sleeps and
writes files. ``AsyncQlamClient`` is the same loop with ``await``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import httpx

from .._log import log
from . import _requests as rq
from ._files import AtomicFile
from ._models import Page, ResultsPage, SubtaskResult, Task, TaskDefinition
from ._settings import ApiSettings
from ._transport import NOT_SENT, bound_requests, client_options, deadline, read_capped, retryable

if TYPE_CHECKING:
    from .._provider import TokenProvider

TaskRef = str | Task
Definition = TaskDefinition | Mapping[str, Any]


class _Common:
    """What the sync and async clients share and that does no I/O after construction."""

    settings: ApiSettings

    def _setup(
        self, settings: ApiSettings | None, provider: TokenProvider | None, auth: httpx.Auth | None
    ) -> httpx.Auth:
        self.settings = settings if settings is not None else ApiSettings.from_env()
        if auth is None:
            from .._auth import QlamAuth

            auth = QlamAuth(provider)
        # User context: who is logged in is known once a token is; the block is built then.
        self._principal_of = getattr(auth, "provider", None)
        self._attribution: dict[str, Any] | None = None
        return auth

    def _creation_body(self, definition: Definition, idempotency_key: str | None) -> dict[str, Any]:
        if self.settings.attribution and self._attribution is None:
            from ._attribution import this_process

            provider = self._principal_of
            self._attribution = this_process(provider.principal() if provider is not None else None)
        attribution = self._attribution if self.settings.attribution else None
        return rq.creation_body(definition, idempotency_key, attribution, self.settings.group)

    def _url(self, request: rq.ApiRequest) -> str:
        return f"{self.settings.base_url}{request.path}"


def _ids(tasks: TaskRef | Iterable[TaskRef]) -> tuple[list[str], bool]:
    if isinstance(tasks, (str, Task)):
        return [_id(tasks)], True
    return [_id(t) if isinstance(t, Task) else str(t) for t in tasks], False


def _id(task: TaskRef) -> str:
    """The id of a task or of its id; a ``Task`` read without one is a ``ValueError`` (its id
    is not the text "None", which would be asked for)."""
    if isinstance(task, str):
        return task
    if task.id is None:
        raise ValueError("the task has no id (the server's answer gave none): it cannot be asked for")
    return task.id


def _transport_delay(retry: rq.Retry, exc: httpx.TransportError, *, sent: bool = True) -> float | None:
    """Seconds to wait before the next attempt after ``exc``, or None to give up; a failure no
    retry can fix (a certificate the client does not trust) is counted and given up on."""
    if retryable(exc):
        return retry.delay(sent=sent)
    retry.give_up()
    return None


def _refuse_redirect(response: httpx.Response) -> None:
    if rq.is_redirect(response.status_code):
        raise rq.redirected(response.status_code, response.headers.get("location", ""), str(response.url))


class QlamClient(_Common):
    """The QLAM tasks API, authenticated through the shared token cache.

    One connection pool per client: make one and reuse it (``with`` closes it).

    >>> with QlamClient() as client:
    ...     task = client.create_task(definition)
    ...     client.wait(task, timeout=3600)
    ...     client.download_results(task.id, "results.json")

    Idempotent requests (GET, cancel, DELETE) are retried after connection failures
    and 429/502/503/504 answers, with backoff, within ``settings.retry``; task creation
    only when the server surely did not act (see ``create_task``).
    """

    def __init__(
        self,
        settings: ApiSettings | None = None,
        *,
        provider: TokenProvider | None = None,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        auth = self._setup(settings, provider, auth)
        self._sleep = sleep
        self._http = httpx.Client(**client_options(self.settings, auth=auth, transport=transport))
        bound_requests(self._http)

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> QlamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- tasks ------------------------------------------------------------------------------

    def create_task(self, definition: Definition, *, idempotency_key: str | None = None) -> Task:
        """Submit a task; it carries attribution in ``system_metadata`` unless turned off.

        Creation is not idempotent, so after a failure the server may have acted on, it is
        not repeated blindly. With ``idempotency_key`` (a string you choose, unique per
        intended task) the key goes into ``user_metadata`` and, after an ambiguous failure,
        the recent tasks are searched for it before the request is sent again.
        """
        return Task.model_validate(self._create(definition, idempotency_key))

    def _create(self, definition: Definition, idempotency_key: str | None) -> dict[str, Any]:
        """The created task as the server wrote it (the CLI prints it unchanged)."""
        body = self._creation_body(definition, idempotency_key)
        request = rq.create_task(self.settings, body)
        created: dict[str, Any]
        if idempotency_key is None:
            created = self._call(request)
            return created
        retry = rq.Retry(self.settings.retry, idempotent=True)
        while True:
            try:
                created = self._call(request)
                return created
            except rq.AMBIGUOUS as error:
                found = self._find_key(idempotency_key)
                if found is not None:
                    log("info", f"{error}; the task was created after all: {found.get('id')}")
                    return found
                delay = retry.delay()
                if delay is None:
                    raise
                log("warning", f"{error}; no task holds the idempotency key, retrying in {delay:.1f}s")
                self._sleep(delay)

    def _find_key(self, key: str) -> dict[str, Any] | None:
        # Newest first: a task this call created is among the latest, unless thousands of
        # others were created since; the search is bounded either way.
        number = 0
        while number < rq.KEY_SEARCH_PAGES:
            page = self._call(rq.list_tasks(self.settings, page=number, size=rq.KEY_SEARCH_SIZE)) or {}
            found: dict[str, Any] | None = rq.find_idempotency_key(page.get("elements") or (), key)
            if found is not None or rq.page_is_last(page):
                return found
            number += 1
        return None

    def list_tasks(
        self, *, page: int = 0, size: int = 10, sort: str | None = None, group_ids: Iterable[str] = ()
    ) -> Page[Task]:
        """One page of tasks (0-based), newest first unless ``sort`` says otherwise."""
        request = rq.list_tasks(self.settings, page=page, size=size, sort=sort, group_ids=group_ids)
        return Page[Task].model_validate(self._call(request))

    def iter_tasks(self, *, size: int = 100, sort: str | None = None, group_ids: Iterable[str] = ()) -> Iterator[Task]:
        """Every task, page after page. A task that moves to a later page while the
        listing is read (a newer one was created) is not yielded twice."""
        groups = tuple(group_ids)
        seen: set[str] = set()
        number = 0
        while True:
            page = self.list_tasks(page=number, size=size, sort=sort, group_ids=groups)
            for task in page.elements:
                if task.id is None:  # nothing to know it again by: yielded as read
                    yield task
                elif task.id not in seen:
                    seen.add(task.id)
                    yield task
            if page.last:
                return
            number += 1

    def get_task(self, task: TaskRef) -> Task:
        return Task.model_validate(self._call(rq.get_task(self.settings, _ids(task)[0][0])))

    def cancel_task(self, task: TaskRef) -> Task:
        """Ask the service to cancel; returns the task as it is now. A task already in a
        terminal state is an ``ApiError`` (HTTP 409)."""
        task_id = _ids(task)[0][0]
        data = self._call(rq.cancel_task(self.settings, task_id))
        return Task.model_validate(data) if isinstance(data, dict) and "id" in data else self.get_task(task_id)

    def delete_task(self, task: TaskRef) -> None:
        """Delete a task (one still running is cancelled first)."""
        self._call(rq.delete_task(self.settings, _ids(task)[0][0]))

    # --- results ----------------------------------------------------------------------------

    def results(
        self,
        task: TaskRef,
        *,
        page: int = 0,
        size: int = 10,
        sort: str | None = None,
        shots_page: int = 0,
        shots_size: int | None = None,
    ) -> ResultsPage:
        """One page of a completed task's subtask results, each with one page of shots."""
        request = rq.task_results(
            self.settings,
            _ids(task)[0][0],
            page=page,
            size=size,
            sort=sort,
            shots_page=shots_page,
            shots_size=shots_size,
        )
        return ResultsPage.model_validate(self._call(request))

    def iter_results(self, task: TaskRef, *, size: int = 10, shots_size: int | None = None) -> Iterator[SubtaskResult]:
        """Every subtask result with all its shots, in subtask order, fetched page by page."""
        for element in self._result_elements(_ids(task)[0][0], size, shots_size):
            yield SubtaskResult.model_validate(element)

    def _result_elements(self, task_id: str, size: int, shots_size: int | None) -> Iterator[dict[str, Any]]:
        """The subtasks as the server wrote them (the CLI prints these unchanged)."""
        number = 0
        while True:
            first = self._call(rq.task_results(self.settings, task_id, page=number, size=size, shots_size=shots_size))
            pages = [first]
            for shots_page in range(1, rq.shot_pages(first)):
                request = rq.task_results(
                    self.settings, task_id, page=number, size=size, shots_page=shots_page, shots_size=shots_size
                )
                pages.append(self._call(request))
            yield from rq.merge_shot_pages(pages)
            if rq.page_is_last(first):
                return
            number += 1

    def download_results(self, task: TaskRef, path: str | os.PathLike[str]) -> Path:
        """Stream a completed task's whole result set (JSON ``{"task_id", "subtasks"}``) to ``path``.

        Written to a temporary file beside ``path`` and renamed into place once complete,
        so ``path`` is never half a file: it is the old content or the whole new one.
        A connection lost mid-stream restarts the download, within the retry budget.
        """
        request = rq.download_results(self.settings, _ids(task)[0][0])
        target = Path(path)
        with AtomicFile(target) as out:
            retry = rq.Retry(self.settings.retry, idempotent=True)
            while True:
                out.restart()
                try:
                    response = self._send(request, stream=True, retry=retry)
                    try:
                        if response.status_code >= 400:
                            body = read_capped(response, self.settings.max_body)
                            raise rq.error_for(response.status_code, body, str(response.url), request)
                        # The stream goes to a file, so it is not capped; its deadline is.
                        with deadline(self.settings.deadline, self._url(request)):
                            for chunk in response.iter_bytes(rq.CHUNK):
                                out.write(chunk)
                    finally:
                        response.close()
                    break
                except httpx.TransportError as exc:
                    delay = _transport_delay(retry, exc)
                    if delay is None:
                        raise rq.unreachable(self._url(request), exc, retry.attempt) from None
                    log(
                        "warning",
                        f"download of {target.name} broke off ({rq.describe(exc)}); restarting in {delay:.1f}s",
                    )
                    self._sleep(delay)
        return target

    # --- waiting ----------------------------------------------------------------------------

    @overload
    def wait(  # type: ignore[overload-overlap]  # a str is also an Iterable of str: one id, as _ids reads it
        self,
        tasks: TaskRef,
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        max_poll_interval: float = ...,
        check: bool = ...,
        on_change: Callable[[Task], None] | None = ...,
    ) -> Task: ...
    @overload
    def wait(
        self,
        tasks: Iterable[TaskRef],
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        max_poll_interval: float = ...,
        check: bool = ...,
        on_change: Callable[[Task], None] | None = ...,
    ) -> list[Task]: ...

    def wait(
        self,
        tasks: TaskRef | Iterable[TaskRef],
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
        check: bool = True,
        on_change: Callable[[Task], None] | None = None,
    ) -> Task | list[Task]:
        """Poll until every task is terminal; returns the final task (or list, for several ids).

        ``check`` (default) raises ``TaskFailed``/``TaskCancelled`` if one did not complete;
        ``timeout`` raises ``WaitTimeout`` (seconds; ``None`` waits for ever). ``on_change``
        is called with each task whose status changed, the first poll included.
        """
        ids, single = _ids(tasks)
        waiter = rq.Waiter(ids, timeout=timeout, poll_interval=poll_interval, max_poll_interval=max_poll_interval)
        while True:
            for task_id in waiter.pending:
                task = self.get_task(task_id)
                if waiter.update(task) and on_change is not None:
                    on_change(task)
            if not waiter.pending:
                break
            self._sleep(waiter.next_delay())
        done = waiter.results()
        if check:
            rq.raise_for_outcome(done)
        return done[0] if single else done

    # --- other calls ------------------------------------------------------------------------

    def userinfo(self) -> dict[str, Any]:
        """The caller's profile (``GET /userinfo``)."""
        profile: dict[str, Any] = self._call(rq.userinfo())
        return profile

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any call, authenticated and (for GET, HEAD, PUT, DELETE, OPTIONS) retried; the
        answer is returned whatever its status, body read, but for a redirect, which is an
        ``ApiError`` (it is not followed: the token would go with it). ``path`` is relative
        to the base URL."""
        request = rq.raw_request(method, path, params=params, content=content, headers=headers)
        return self._send(request)

    # --- the loop ---------------------------------------------------------------------------

    def _call(self, request: rq.ApiRequest) -> Any:
        """Send, retry, and return the answer's JSON; an error answer raises its ``QlamError``."""
        response = self._send(request)
        body = response.content
        if response.status_code >= 400:
            raise rq.error_for(response.status_code, body, str(response.url), request)
        return rq.read_json(response.status_code, response.headers.get("content-type", ""), body, str(response.url))

    def _send(self, request: rq.ApiRequest, *, stream: bool = False, retry: rq.Retry | None = None) -> httpx.Response:
        """The answer (read, within ``settings.max_body``, unless ``stream``) after the retries;
        each attempt within ``settings.deadline``. A redirect is an ``ApiError``."""
        retry = retry or rq.Retry(self.settings.retry, idempotent=request.idempotent)
        while True:
            http_request = self._http.build_request(**rq.httpx_arguments(request))
            try:
                with deadline(self.settings.deadline, self._url(request)):
                    response = self._http.send(http_request, stream=True)
                    try:
                        _refuse_redirect(response)
                        if not stream and response.status_code not in rq.RETRY_STATUSES:
                            read_capped(response, self.settings.max_body)
                    except BaseException:
                        response.close()
                        raise
            except httpx.TransportError as exc:
                delay = _transport_delay(retry, exc, sent=not isinstance(exc, NOT_SENT))
                if delay is None:
                    raise rq.unreachable(self._url(request), exc, retry.attempt) from None
                log("warning", f"QLAM API {self._url(request)}: {rq.describe(exc)}; {rq.retrying(delay, retry)}")
                self._sleep(delay)
                continue
            if response.status_code in rq.RETRY_STATUSES:
                delay = retry.delay(status=response.status_code, headers=response.headers)
                if delay is not None:
                    response.close()
                    log(
                        "warning",
                        f"QLAM API {self._url(request)} answered HTTP {response.status_code}; "
                        f"{rq.retrying(delay, retry)}",
                    )
                    self._sleep(delay)
                    continue
                if not stream:
                    with deadline(self.settings.deadline, self._url(request)):
                        try:
                            read_capped(response, self.settings.max_body)
                        finally:
                            response.close()
            from .._audit import api_answer  # a state-changing call, when auditing is on

            api_answer(
                request, response.status_code, response.headers, b"" if stream else response.content, self._principal_of
            )
            return response
