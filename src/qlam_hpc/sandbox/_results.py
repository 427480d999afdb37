"""A completed task's results: made up, but deterministic, in two shapes that line up exactly.

Every bitstring is the first ``QUBITS`` bits of
``sha256("<task id>/<subtask order>/<shot index>/<arguments as canonical JSON>")``,
and every timestamp is an integer-microsecond offset into the task's execution
window (``ExecutionStarted`` to ``ExecutionCompleted``, fixed at creation): so
the same task gives the same results on every call and after a restart.

The subtasks run one after the other, each in an equal slice of the window;
its shots split its slice equally, and each shot's one measurement is taken
in the middle of the shot.

Shapes (``subtask_element`` builds both, so their keys and values agree):

* JSON page: ``{"task_id", "elements": [element...], "page", "size", "total"}`` where
  an element is ``{"subtask_order", "program_index", "num_shots", "arguments",
  "completed_date", "shots_page", "shots_size", "shots_total", "shots": [...]}``
  and ``shots`` is the ``shots_page``-th slice of ``shots_size`` shots;
* download: ``{"task_id", "subtasks": [element...]}`` with every subtask in
  ``subtask_order`` and every shot, elements without ``shots_page``/``shots_size``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from ._tasks_lifecycle import iso_date
from ._tasks_store import StoredTask

__all__ = ["QUBITS", "TaskResults", "dumps"]

QUBITS = 8


@lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    return iso_date(second * 1_000_000)[:-13]  # "2025-01-31T12:00:00" of "...T12:00:00.000000+00:00"


def _iso(us: int) -> str:
    """``iso_date(us)``, several times faster: a result set holds two timestamps per shot,
    and the shots of one task fall within a few seconds."""
    second, micro = divmod(us, 1_000_000)
    return f"{_iso_second(second)}.{micro:06d}+00:00"


def dumps(value: Any) -> bytes:
    """The tasks API's JSON encoding, for answers and the download alike.

    ASCII-only, so that strings a client sent with lone surrogates (legal JSON
    escapes, not encodable as UTF-8) cannot break an answer; ASCII is UTF-8.
    """
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


class TaskResults:
    """The results of one ``Completed`` task."""

    def __init__(self, task: StoredTask) -> None:
        self.task = task
        self._window = task.timeline.execution_window

    @property
    def total(self) -> int:
        return self.task.num_subtasks

    def bitstring(self, order: int, shot: int) -> str:
        """``sha256("<task id>/<subtask order>/<shot index>/<canonical arguments>")``, first QUBITS bits."""
        return self._bitstrings(order)(shot)

    def _bitstrings(self, order: int) -> Callable[[int], str]:
        # The arguments' canonical JSON is the same for every shot of a subtask: encode it once.
        arguments = json.dumps(self._arguments(order), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        prefix, suffix = f"{self.task.id}/{order}/".encode("ascii"), f"/{arguments}".encode("ascii")
        shift, width = 256 - QUBITS, f"0{QUBITS}b"

        def bits(shot: int) -> str:
            digest = hashlib.sha256(prefix + str(shot).encode("ascii") + suffix).digest()
            return format(int.from_bytes(digest, "big") >> shift, width)

        return bits

    def subtask_element(
        self, order: int, *, shots_page: int | None = None, shots_size: int | None = None
    ) -> dict[str, Any]:
        """One subtask's result: with ``shots_page``/``shots_size`` a page's element, else the download's."""
        subtask = self.task.subtasks[order]
        num_shots = subtask["num_shots"]
        start_us, end_us = self._slot(order)
        element: dict[str, Any] = {
            "subtask_order": order,
            "program_index": subtask["program_index"],
            "num_shots": num_shots,
            "arguments": self._arguments(order),
            "completed_date": _iso(end_us),
        }
        if shots_page is None or shots_size is None:
            first, last = 0, num_shots
        else:
            element["shots_page"] = shots_page
            element["shots_size"] = shots_size
            first = min(shots_page * shots_size, num_shots)
            last = min(first + shots_size, num_shots)
        element["shots_total"] = num_shots
        span, bits = end_us - start_us, self._bitstrings(order)
        element["shots"] = [
            {
                "shot_index": j,
                "shot_start_time": _iso(start_us + span * j // num_shots),
                "measurements": [
                    {
                        "bitstring": bits(j),
                        "measurement_time": _iso(start_us + span * (2 * j + 1) // (2 * num_shots)),
                    }
                ],
            }
            for j in range(first, last)
        ]
        return element

    def page(self, *, page: int, size: int, descending: bool, shots_page: int, shots_size: int) -> dict[str, Any]:
        """The ``page``-th page of ``size`` subtasks, sorted by ``subtask_order``."""
        orders = range(self.total - 1, -1, -1) if descending else range(self.total)
        chosen = orders[min(page * size, self.total) : min(page * size + size, self.total)]
        return {
            "task_id": self.task.id,
            "elements": [self.subtask_element(o, shots_page=shots_page, shots_size=shots_size) for o in chosen],
            "page": page,
            "size": size,
            "total": self.total,
        }

    def download(self) -> Iterator[bytes]:
        """The whole result set as JSON, one subtask per chunk, so memory stays bounded by one subtask."""
        yield b'{"task_id":' + dumps(self.task.id) + b',"subtasks":['
        for order in range(self.total):
            yield (b"," if order else b"") + dumps(self.subtask_element(order))
        yield b"]}"

    def _arguments(self, order: int) -> dict[str, Any]:
        return self.task.subtasks[order].get("arguments") or {}

    def _slot(self, order: int) -> tuple[int, int]:
        """When subtask ``order`` runs: its equal slice of the execution window."""
        start, end = self._window
        width = end - start
        return start + width * order // self.total, start + width * (order + 1) // self.total
