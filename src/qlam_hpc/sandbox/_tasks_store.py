"""Where tasks live: SQLite, in memory or in ``state_dir/tasks.sqlite3``; and the state dir's signing key.

One connection shared by the server's threads (the event loop and the thread pool
that runs sync routes), so every use takes one lock; each call is one short
statement or transaction, committed before the lock is let go.  A task row holds
only what never changes after creation plus its cancellation: its status is
computed from those (``_tasks_lifecycle``), so nothing needs updating as time passes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from .._errors import ConfigurationError
from ._keys import SigningKey
from ._state_dir import open_private_file, prepare_state_dir
from ._tasks_lifecycle import Timeline

__all__ = ["StoredTask", "TaskStore", "state_dir_signing_key"]

DB_NAME = "tasks.sqlite3"
KEY_NAME = "signing-key.pem"
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,            -- the creating token's sub
    qpu_mode TEXT NOT NULL,
    created_us INTEGER NOT NULL,    -- microseconds since the epoch
    duration_us INTEGER NOT NULL,   -- task_duration when it was created
    outcome TEXT NOT NULL,          -- ok, fail or invalid (see _tasks_lifecycle)
    error_reason TEXT,
    cancelled_us INTEGER,
    cancelled_by TEXT,
    created_by TEXT NOT NULL,
    definition_id TEXT NOT NULL,
    compilation_id TEXT,
    group_id TEXT,
    profile_id TEXT,
    user_metadata TEXT,
    system_metadata TEXT,
    subtasks TEXT NOT NULL,         -- JSON: [{program_index, num_shots, arguments}]
    request TEXT NOT NULL           -- the creation body as sent, unknown fields included
);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, qpu_mode);
CREATE TABLE IF NOT EXISTS definitions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    definition TEXT NOT NULL        -- JSON: {program_language, programs, subtasks}
);
"""

_COLUMNS = (
    "id, owner, qpu_mode, created_us, duration_us, outcome, error_reason, cancelled_us, cancelled_by, "
    "created_by, definition_id, compilation_id, group_id, profile_id, user_metadata, system_metadata, subtasks"
)
_NAMES = tuple(name.strip() for name in _COLUMNS.split(","))


@dataclass(frozen=True)
class StoredTask:
    id: str
    owner: str
    qpu_mode: str
    created_us: int
    duration_us: int
    outcome: str
    error_reason: str | None
    cancelled_us: int | None
    cancelled_by: str | None
    created_by: str
    definition_id: str
    compilation_id: str | None
    group_id: str | None
    profile_id: str | None
    user_metadata: str | None
    system_metadata: str | None
    subtasks: list[dict[str, Any]] = field(repr=False)

    @property
    def timeline(self) -> Timeline:
        return Timeline(self.created_us, self.duration_us, self.outcome, self.error_reason, self.cancelled_us)

    @property
    def num_subtasks(self) -> int:
        return len(self.subtasks)

    @property
    def total_shots(self) -> int:
        return sum(s["num_shots"] for s in self.subtasks)

    def _row(self) -> tuple[Any, ...]:
        return (
            self.id, self.owner, self.qpu_mode, self.created_us, self.duration_us, self.outcome,
            self.error_reason, self.cancelled_us, self.cancelled_by, self.created_by, self.definition_id,
            self.compilation_id, self.group_id, self.profile_id, self.user_metadata, self.system_metadata,
            _dump(self.subtasks),
        )  # fmt: skip

    @classmethod
    def _from_row(cls, row: tuple[Any, ...]) -> StoredTask:
        fields = dict(zip(_NAMES, row, strict=True))
        return cls(**{**fields, "subtasks": json.loads(fields["subtasks"])})


class TaskStore:
    """Tasks and definitions of one sandbox; ``path=None`` keeps them in memory."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        # check_same_thread=False: the lock below, not the thread, guards the connection.
        # isolation_level=None: autocommit; multi-statement changes use explicit transactions.
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                str(path) if path else ":memory:", check_same_thread=False, isolation_level=None, timeout=10
            )
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                self._db.close()
                raise ConfigurationError(f"{path} holds tasks in an unknown layout (schema version {version})")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot keep tasks in {path}: {exc}") from None

    @classmethod
    def open(cls, state_dir: Path | None) -> TaskStore:
        if state_dir is None:
            return cls(None)
        real = prepare_state_dir(state_dir)
        # Made 0600 before SQLite creates it (its journal files copy the mode); one that is
        # there already must be yours and private (see _state_dir).
        fd = open_private_file(state_dir, real, DB_NAME, os.O_CREAT | os.O_RDWR)
        assert fd is not None  # O_CREAT
        os.close(fd)
        return cls(real / DB_NAME)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, task: StoredTask, request: dict[str, Any], definition: dict[str, Any] | None = None) -> None:
        """Store a new task; ``definition`` (an inline one) is kept under the task's ``definition_id``."""
        placeholders = ", ".join("?" * (len(_COLUMNS.split(",")) + 1))
        with self._lock, self._transaction():
            if definition is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO definitions (id, owner, definition) VALUES (?, ?, ?)",
                    (task.definition_id, task.owner, _dump(definition)),
                )
            self._db.execute(
                f"INSERT INTO tasks ({_COLUMNS}, request) VALUES ({placeholders})", (*task._row(), _dump(request))
            )

    def definition(self, owner: str, definition_id: str) -> dict[str, Any] | None:
        """A definition this owner stored earlier, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT definition FROM definitions WHERE id = ? AND owner = ?", (definition_id, owner)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def get(self, owner: str, qpu_mode: str, task_id: str) -> StoredTask | None:
        with self._lock:
            return self._get(owner, qpu_mode, task_id)

    def request_body(self, task_id: str) -> dict[str, Any] | None:
        """The creation body exactly as it was sent (for tests and debugging)."""
        with self._lock:
            row = self._db.execute("SELECT request FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list(
        self, owner: str, qpu_mode: str, group_ids: Iterable[str] = (), *, default_group: str | None = None
    ) -> list[StoredTask]:
        """Every task of this owner and mode (in one of ``group_ids``, if any are given), unordered.

        A task stored without a group (by a sandbox older than groups for all) counts as
        being in ``default_group``.
        """
        groups = list(dict.fromkeys(group_ids))
        sql = f"SELECT {_COLUMNS} FROM tasks WHERE owner = ? AND qpu_mode = ?"
        if groups:
            sql += f" AND COALESCE(group_id, ?) IN ({', '.join('?' * len(groups))})"
        with self._lock:
            rows = self._db.execute(sql, (owner, qpu_mode, *([default_group, *groups] if groups else ()))).fetchall()
        return [StoredTask._from_row(row) for row in rows]

    def cancel(
        self, owner: str, qpu_mode: str, task_id: str, *, when_us: int, by: str, allowed: Callable[[StoredTask], bool]
    ) -> tuple[StoredTask | None, bool]:
        """Mark the task cancelled if ``allowed(task)``: ``(task as it is now, whether it was cancelled)``.

        The check and the update happen under one lock, so two cancels cannot both win.
        """
        with self._lock, self._transaction():
            task = self._get(owner, qpu_mode, task_id)
            if task is None or not allowed(task):
                return task, False
            self._db.execute("UPDATE tasks SET cancelled_us = ?, cancelled_by = ? WHERE id = ?", (when_us, by, task_id))
            return self._get(owner, qpu_mode, task_id), True

    def delete(self, owner: str, qpu_mode: str, task_id: str) -> bool:
        """Remove the task; False if this owner has no such task."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM tasks WHERE id = ? AND owner = ? AND qpu_mode = ?", (task_id, owner, qpu_mode)
            )
        return cursor.rowcount > 0

    def _get(self, owner: str, qpu_mode: str, task_id: str) -> StoredTask | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE id = ? AND owner = ? AND qpu_mode = ?", (task_id, owner, qpu_mode)
        ).fetchone()
        return StoredTask._from_row(row) if row else None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on an exception (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _dump(value: Any) -> str:
    # ensure_ascii: lone surrogates (valid in JSON escapes, not in UTF-8) survive the round trip.
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def state_dir_signing_key(state_dir: Path) -> SigningKey:
    """The signing key kept in ``state_dir/signing-key.pem`` (mode 0600), made on first use.

    Keeping it there is what lets tokens issued before a restart verify after it.
    The new file is linked into place only once complete, so a second sandbox
    starting on the same directory at the same moment reads a whole key, never half.
    A key file that is not yours, or that others can read, is refused (see _state_dir).
    """
    real = prepare_state_dir(state_dir)
    existing = _read_key(state_dir, real)
    if existing is not None:
        return existing
    key = SigningKey.generate()
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{KEY_NAME}.", dir=real)  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, real / KEY_NAME)  # fails if another process got there first
        except FileExistsError:
            existing = _read_key(state_dir, real)
            if existing is not None:
                return existing
            raise ConfigurationError(f"cannot keep a signing key in {state_dir / KEY_NAME}: it vanished") from None
    finally:
        os.unlink(tmp)
    return key


def _read_key(state_dir: Path, real: Path) -> SigningKey | None:
    fd = open_private_file(state_dir, real, KEY_NAME, os.O_RDONLY)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        return SigningKey.from_pem(handle.read(), state_dir / KEY_NAME)
