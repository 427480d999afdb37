"""``AsyncQlamClient``: ``QlamClient`` with ``await``, for many tasks at once.

Same protocol core (``_requests``), same retries, same errors; runs on asyncio
or trio (through anyio, as httpx does).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import anyio
import httpx

from .._log import log
from . import _requests as rq
from ._client import Definition, TaskRef, _Common, _ids, _refuse_redirect, _transport_delay
from ._files import AtomicFile
from ._models import Page, ResultsPage, SubtaskResult, Task
from ._settings import ApiSettings
from ._transport import NOT_SENT, aread_capped, bound_requests, client_options, deadline

if TYPE_CHECKING:
    from .._provider import TokenProvider

#: Tasks polled at once by one ``wait`` call.
POLL_CONCURRENCY = 16


class AsyncQlamClient(_Common):
    """The QLAM tasks API for ``async`` code; one connection pool per client.

    >>> async with AsyncQlamClient() as client:
    ...     tasks = [await client.create_task(d) for d in definitions]
    ...     await client.wait(tasks, timeout=3600)

    The token comes from the shared cache like ``QlamClient``'s, on a worker thread so
    a process waiting for another's refresh never blocks the event loop.
    """

    def __init__(
        self,
        settings: ApiSettings | None = None,
        *,
        provider: TokenProvider | None = None,
        auth: httpx.Auth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        auth = self._setup(settings, provider, auth)
        self._sleep = sleep
        self._http = httpx.AsyncClient(**client_options(self.settings, auth=auth, transport=transport))
        bound_requests(self._http)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncQlamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- tasks ------------------------------------------------------------------------------

    async def create_task(self, definition: Definition, *, idempotency_key: str | None = None) -> Task:
        """See ``QlamClient.create_task``."""
        body = self._creation_body(definition, idempotency_key)
        request = rq.create_task(self.settings, body)
        if idempotency_key is None:
            return Task.model_validate(await self._call(request))
        retry = rq.Retry(self.settings.retry, idempotent=True)
        while True:
            try:
                return Task.model_validate(await self._call(request))
            except rq.AMBIGUOUS as error:
                found = await self._find_key(idempotency_key)
                if found is not None:
                    log("info", f"{error}; the task was created after all: {found.id}")
                    return found
                delay = retry.delay()
                if delay is None:
                    raise
                log("warning", f"{error}; no task holds the idempotency key, retrying in {delay:.1f}s")
                await self._sleep(delay)

    async def _find_key(self, key: str) -> Task | None:
        number = 0
        while number < rq.KEY_SEARCH_PAGES:
            page = await self.list_tasks(page=number, size=rq.KEY_SEARCH_SIZE)
            found: Task | None = rq.find_idempotency_key(page.elements, key)
            if found is not None or page.last:
                return found
            number += 1
        return None

    async def list_tasks(
        self, *, page: int = 0, size: int = 10, sort: str | None = None, group_ids: Iterable[str] = ()
    ) -> Page[Task]:
        request = rq.list_tasks(self.settings, page=page, size=size, sort=sort, group_ids=group_ids)
        return Page[Task].model_validate(await self._call(request))

    async def iter_tasks(
        self, *, size: int = 100, sort: str | None = None, group_ids: Iterable[str] = ()
    ) -> AsyncIterator[Task]:
        groups = tuple(group_ids)
        seen: set[str] = set()
        number = 0
        while True:
            page = await self.list_tasks(page=number, size=size, sort=sort, group_ids=groups)
            for task in page.elements:
                if task.id is None:  # nothing to know it again by: yielded as read
                    yield task
                elif task.id not in seen:
                    seen.add(task.id)
                    yield task
            if page.last:
                return
            number += 1

    async def get_task(self, task: TaskRef) -> Task:
        return Task.model_validate(await self._call(rq.get_task(self.settings, _ids(task)[0][0])))

    async def cancel_task(self, task: TaskRef) -> Task:
        task_id = _ids(task)[0][0]
        data = await self._call(rq.cancel_task(self.settings, task_id))
        return Task.model_validate(data) if isinstance(data, dict) and "id" in data else await self.get_task(task_id)

    async def delete_task(self, task: TaskRef) -> None:
        await self._call(rq.delete_task(self.settings, _ids(task)[0][0]))

    # --- results ----------------------------------------------------------------------------

    async def results(
        self,
        task: TaskRef,
        *,
        page: int = 0,
        size: int = 10,
        sort: str | None = None,
        shots_page: int = 0,
        shots_size: int | None = None,
    ) -> ResultsPage:
        request = rq.task_results(
            self.settings,
            _ids(task)[0][0],
            page=page,
            size=size,
            sort=sort,
            shots_page=shots_page,
            shots_size=shots_size,
        )
        return ResultsPage.model_validate(await self._call(request))

    async def iter_results(
        self, task: TaskRef, *, size: int = 10, shots_size: int | None = None
    ) -> AsyncIterator[SubtaskResult]:
        task_id = _ids(task)[0][0]
        number = 0
        while True:
            first = await self._call(
                rq.task_results(self.settings, task_id, page=number, size=size, shots_size=shots_size)
            )
            pages = [first]
            for shots_page in range(1, rq.shot_pages(first)):
                request = rq.task_results(
                    self.settings, task_id, page=number, size=size, shots_page=shots_page, shots_size=shots_size
                )
                pages.append(await self._call(request))
            for element in rq.merge_shot_pages(pages):
                yield SubtaskResult.model_validate(element)
            if rq.page_is_last(first):
                return
            number += 1

    async def download_results(self, task: TaskRef, path: str | os.PathLike[str]) -> Path:
        """See ``QlamClient.download_results``: streamed, atomic, restarted if cut off."""
        request = rq.download_results(self.settings, _ids(task)[0][0])
        target = Path(path)
        with AtomicFile(target) as out:
            retry = rq.Retry(self.settings.retry, idempotent=True)
            while True:
                out.restart()
                try:
                    response = await self._send(request, stream=True, retry=retry)
                    try:
                        if response.status_code >= 400:
                            body = await aread_capped(response, self.settings.max_body)
                            raise rq.error_for(response.status_code, body, str(response.url), request)
                        # The stream goes to a file, so it is not capped; its deadline is.
                        with deadline(self.settings.deadline, self._url(request)):
                            async for chunk in response.aiter_bytes(rq.CHUNK):
                                out.write(chunk)
                    finally:
                        await response.aclose()
                    break
                except httpx.TransportError as exc:
                    delay = _transport_delay(retry, exc)
                    if delay is None:
                        raise rq.unreachable(self._url(request), exc, retry.attempt) from None
                    log(
                        "warning",
                        f"download of {target.name} broke off ({rq.describe(exc)}); restarting in {delay:.1f}s",
                    )
                    await self._sleep(delay)
        return target

    # --- waiting ----------------------------------------------------------------------------

    @overload
    async def wait(  # type: ignore[overload-overlap]  # a str is also an Iterable of str: one id, as _ids reads it
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
    async def wait(
        self,
        tasks: Iterable[TaskRef],
        *,
        timeout: float | None = ...,
        poll_interval: float = ...,
        max_poll_interval: float = ...,
        check: bool = ...,
        on_change: Callable[[Task], None] | None = ...,
    ) -> list[Task]: ...

    async def wait(
        self,
        tasks: TaskRef | Iterable[TaskRef],
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
        check: bool = True,
        on_change: Callable[[Task], None] | None = None,
    ) -> Task | list[Task]:
        """See ``QlamClient.wait``; the pending tasks of each round are polled concurrently."""
        ids, single = _ids(tasks)
        waiter = rq.Waiter(ids, timeout=timeout, poll_interval=poll_interval, max_poll_interval=max_poll_interval)
        while True:
            pending = waiter.pending
            polled = await self._gather([partial(self.get_task, i) for i in pending], POLL_CONCURRENCY)
            for task in polled:
                if waiter.update(task) and on_change is not None:
                    on_change(task)
            if not waiter.pending:
                break
            await self._sleep(waiter.next_delay())
        done = waiter.results()
        if check:
            rq.raise_for_outcome(done)
        return done[0] if single else done

    @staticmethod
    async def _gather(calls: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
        """Results of ``calls`` run at most ``limit`` at a time; the first error is raised
        as itself (not in an exception group) once all have finished."""
        if len(calls) == 1:
            return [await calls[0]()]
        results: list[Any] = [None] * len(calls)
        errors: list[BaseException] = []
        limiter = anyio.CapacityLimiter(limit)

        async def run(index: int) -> None:
            async with limiter:
                try:
                    results[index] = await calls[index]()
                except Exception as error:
                    errors.append(error)

        async with anyio.create_task_group() as group:
            for index in range(len(calls)):
                group.start_soon(run, index)
        if errors:
            raise errors[0]
        return results

    # --- other calls ------------------------------------------------------------------------

    async def userinfo(self) -> dict[str, Any]:
        profile: dict[str, Any] = await self._call(rq.userinfo())
        return profile

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """See ``QlamClient.request``."""
        request = rq.raw_request(method, path, params=params, content=content, headers=headers)
        return await self._send(request)

    # --- the loop ---------------------------------------------------------------------------

    async def _call(self, request: rq.ApiRequest) -> Any:
        response = await self._send(request)
        body = response.content
        if response.status_code >= 400:
            raise rq.error_for(response.status_code, body, str(response.url), request)
        return rq.read_json(response.status_code, response.headers.get("content-type", ""), body, str(response.url))

    async def _send(
        self, request: rq.ApiRequest, *, stream: bool = False, retry: rq.Retry | None = None
    ) -> httpx.Response:
        retry = retry or rq.Retry(self.settings.retry, idempotent=request.idempotent)
        while True:
            http_request = self._http.build_request(**rq.httpx_arguments(request))
            try:
                with deadline(self.settings.deadline, self._url(request)):
                    response = await self._http.send(http_request, stream=True)
                    try:
                        _refuse_redirect(response)
                        if not stream and response.status_code not in rq.RETRY_STATUSES:
                            await aread_capped(response, self.settings.max_body)
                    except BaseException:
                        await response.aclose()
                        raise
            except httpx.TransportError as exc:
                delay = _transport_delay(retry, exc, sent=not isinstance(exc, NOT_SENT))
                if delay is None:
                    raise rq.unreachable(self._url(request), exc, retry.attempt) from None
                log("warning", f"QLAM API {self._url(request)}: {rq.describe(exc)}; {rq.retrying(delay, retry)}")
                await self._sleep(delay)
                continue
            if response.status_code in rq.RETRY_STATUSES:
                delay = retry.delay(status=response.status_code, headers=response.headers)
                if delay is not None:
                    await response.aclose()
                    log(
                        "warning",
                        f"QLAM API {self._url(request)} answered HTTP {response.status_code}; "
                        f"{rq.retrying(delay, retry)}",
                    )
                    await self._sleep(delay)
                    continue
                if not stream:
                    with deadline(self.settings.deadline, self._url(request)):
                        try:
                            await aread_capped(response, self.settings.max_body)
                        finally:
                            await response.aclose()
            from .._audit import api_answer  # a state-changing call, when auditing is on

            api_answer(
                request, response.status_code, response.headers, b"" if stream else response.content, self._principal_of
            )
            return response
