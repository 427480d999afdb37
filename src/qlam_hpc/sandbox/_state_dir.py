"""The state dir (``--state-dir``): made private if it is missing, refused if another user
could read or change what the sandbox keeps in it.

What is at stake on a shared login node: the signing key in it signs every token the
sandbox issues, and ``tasks.sqlite3`` holds every user's tasks.  A directory someone
else made (or can write, or can swap by re-pointing a link or renaming a directory
above it) lets them plant their own key, so the sandbox signs with a key they hold,
and read the tasks.  So the path is followed one name at a time, as the kernel
would, and every directory passed through must be yours or root's and not writable
by others (unless sticky, as ``/tmp``: then nobody can rename what is yours), every
symbolic link must be yours or root's, and the state dir itself must be yours and
writable by you only.  Once that holds, nobody else can change what the path names,
so the files in it are then opened by that path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .._errors import ConfigurationError

__all__ = ["prepare_state_dir", "open_private_file"]

_MAX_LINKS = 40  # as the kernel's ELOOP limit


def prepare_state_dir(path: Path) -> Path:
    """Check ``path`` (made mode 0700, with any missing parents, if it does not exist);
    its resolved path, which nobody else can re-point, or a ``ConfigurationError``."""
    for _ in range(3):
        real, missing = _follow(path)
        try:
            for name in missing:
                if name in (".", ".."):
                    raise ConfigurationError(f"cannot make the state dir {path}: it goes up out of a missing directory")
                real = os.path.join(real, name)
                os.mkdir(real, 0o700)
        except FileExistsError:
            continue  # someone made it between the look and the mkdir: look again, it gets checked
        except OSError as exc:
            raise ConfigurationError(f"cannot make the state dir {path}: {exc.strerror or exc}") from None
        _check_own(path, real)
        return Path(real)
    raise ConfigurationError(f"cannot make the state dir {path}: it keeps changing under it")


def open_private_file(state_dir: Path, real: Path, name: str, flags: int, mode: int = 0o600) -> int | None:
    """Open ``real/name`` (never through a link) and check it is a file of yours that nobody else
    can read or write; its descriptor, or ``None`` if it does not exist (and ``flags`` has no
    ``O_CREAT``).  ``state_dir`` is the path as the user gave it, for messages."""
    shown = state_dir / name
    try:
        fd = os.open(real / name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link: it could point at a file someone else holds
            raise ConfigurationError(f"{shown} in the state dir is a symbolic link: refusing it") from None
        raise ConfigurationError(f"cannot use {shown} in the state dir: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"{shown} in the state dir is not a regular file: refusing it")
        if info.st_uid != os.geteuid():
            raise ConfigurationError(
                f"{shown} belongs to {_who(info.st_uid)}, not to you: refusing it (whoever wrote it could "
                f"have planted it); remove it, or use a state dir of your own"
            )
        if info.st_mode & 0o077:
            raise ConfigurationError(
                f"{shown} can be read or written by group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"refusing it; chmod 600 {shown}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _follow(path: Path) -> tuple[str, list[str]]:
    """Follow ``path`` one name at a time, checking each directory passed through and each link:
    the resolved path of the deepest part that exists, and the names below it that do not."""
    given = os.path.join(os.getcwd(), path)  # not normalised: ".." after a link is the link target's parent
    todo = [name for name in reversed(given.split("/")) if name]  # a stack: the next name last
    current, links = "/", 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)  # current is resolved, so this is the real parent
            continue
        _check_on_the_way(path, current)
        candidate = os.path.join(current, name)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return current, [name, *reversed(todo)]
        except OSError as exc:
            raise ConfigurationError(f"cannot check the state dir {path} at {candidate}: {exc.strerror}") from None
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigurationError(
                f"the state dir {path} is reached through the symbolic link {candidate}, which belongs to "
                f"{_who(info.st_uid)}, who can re-point it: refusing it; name a directory of your own by its own path"
            )
        links += 1
        if links > _MAX_LINKS:
            raise ConfigurationError(f"cannot check the state dir {path}: too many symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = "/"
        todo.extend(name for name in reversed(target.split("/")) if name)
    return current, []


def _check_on_the_way(path: Path, directory: str) -> None:
    """A directory the path goes through: whoever owns it, or can write it, could swap what is below."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise ConfigurationError(f"cannot check the state dir {path} at {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"the state dir {path} cannot be made: {directory} is not a directory")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigurationError(
            f"the state dir {path} is inside {directory}, which belongs to {_who(info.st_uid)}, who could "
            f"swap it: refusing it; use a directory in one of your own"
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise ConfigurationError(
            f"the state dir {path} is inside {directory}, which group or others can write "
            f"(mode {stat.S_IMODE(info.st_mode):04o}) and so swap it: refusing it; use a directory in one of your own"
        )


def _check_own(path: Path, real: str) -> None:
    """The state dir itself: yours, a directory, and writable by you only."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except NotADirectoryError:
        raise ConfigurationError(f"the state dir {path} is not a directory") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot use the state dir {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if info.st_uid != os.geteuid():
        raise ConfigurationError(
            f"the state dir {path} belongs to {_who(info.st_uid)}, not to you: refusing it (its owner could "
            "read the tasks and plant a signing key); use a directory of your own"
        )
    if info.st_mode & 0o022:
        raise ConfigurationError(
            f"the state dir {path} can be written by group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"refusing it (they could plant a signing key); chmod 700 {path}"
        )


def _who(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
