"""How long this batch job has left before its time limit: what ``--min-ttl job`` asks for.

Read from the job's own information, cheapest first:

* Slurm sets ``SLURM_JOB_END_TIME`` (epoch seconds) in jobs since 23.02: no process,
  no request to the controller — it matters when a thousand array tasks ask at once.
* Otherwise one ``squeue -h -j $SLURM_JOB_ID -o '%L|%e'`` (time left, end time), or
  ``scontrol show job -o`` where squeue is missing; a 10 s timeout.
* PBS Pro / Torque: ``qstat -f $PBS_JOBID``, best effort: ``Walltime.Remaining``
  (Torque), else start time + ``Resource_List.walltime``, else the limit minus
  ``resources_used.walltime`` (which the server updates only every minute or two).

Outside a job, in a job without a time limit, or when the scheduler does not answer,
the answer is None with the reason. The parsers are pure functions of the command's
output and the current time, so they are tested without a scheduler.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple
from collections.abc import Callable, Mapping

_TIMEOUT = 10.0
# Where Slurm and PBS install their commands when a job's PATH lacks them
# (`sbatch --export=NONE` drops PATH).
_FALLBACK_DIRS = ("/usr/bin", "/usr/local/bin", "/opt/slurm/bin", "/opt/pbs/bin", "/usr/local/pbs/bin")


TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import NamedTuple

    class _TimeLeftFields(NamedTuple):  # the fields as the type checker reads them
        seconds: float | None
        source: str | None
        reason: str | None

else:
    _TimeLeftFields = namedtuple("_TimeLeftFields", "seconds source reason")


class TimeLeft(_TimeLeftFields):
    """``seconds`` left before the job's time limit (None when unknown), where that came from
    (``SLURM_JOB_END_TIME``, ``squeue``, ``scontrol``, ``qstat``), or why it is unknown."""

    __slots__ = ()


Run = Callable[[list[str]], str]


def job_time_left(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds until this batch job's time limit ends; None when that cannot be known
    (``read_time_left(env).reason`` says why)."""
    return read_time_left(env).seconds


def read_time_left(
    env: Mapping[str, str] | None = None, *, now: float | None = None, run: Run | None = None
) -> TimeLeft:
    """The time left with its source, or None with the reason. ``run`` runs a command and
    returns its stdout (raising ``OSError`` or ``subprocess.SubprocessError``): for tests."""
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    run = run or _runner(env)
    slurm_job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if slurm_job:
        return _slurm(slurm_job, env, now, run)
    if env.get("PBS_JOBID"):
        return _pbs(env["PBS_JOBID"], env, now, run)
    return TimeLeft(None, None, "not inside a Slurm or PBS job (neither SLURM_JOB_ID nor PBS_JOBID is set)")


def _slurm(job: str, env: Mapping[str, str], now: float, run: Run) -> TimeLeft:
    end = env.get("SLURM_JOB_END_TIME")
    if end:
        try:
            return TimeLeft(_positive(float(end) - now), "SLURM_JOB_END_TIME", None)
        except ValueError:
            pass  # not a number: ask the controller
    squeue = _which("squeue", env)
    if squeue:
        command, parse, source = [squeue, "-h", "-j", job, "-o", "%L|%e"], parse_squeue, "squeue"
    else:
        scontrol = _which("scontrol", env)
        if not scontrol:
            return TimeLeft(None, None, f"Slurm job {job}, but neither squeue nor scontrol is on PATH")
        command, parse, source = [scontrol, "show", "job", "-o", job], parse_scontrol, "scontrol"
    try:
        output = run(command)
    except Exception as exc:  # OSError, timeout, non-zero exit: all mean "cannot tell"
        return TimeLeft(None, None, f"{source} could not tell Slurm job {job}'s time limit ({_describe(exc)})")
    try:
        return TimeLeft(parse(output, now), source, None)
    except ValueError as reason:
        return TimeLeft(None, None, f"Slurm job {job}: {reason}")


def _pbs(job: str, env: Mapping[str, str], now: float, run: Run) -> TimeLeft:
    qstat = _which("qstat", env)
    if not qstat:
        return TimeLeft(None, None, f"PBS job {job}, but qstat is not on PATH")
    try:
        output = run([qstat, "-f", job])
    except Exception as exc:
        return TimeLeft(None, None, f"qstat could not tell PBS job {job}'s walltime ({_describe(exc)})")
    try:
        return TimeLeft(parse_qstat(output, now), "qstat", None)
    except ValueError as reason:
        return TimeLeft(None, None, f"PBS job {job}: {reason}")


# --- parsers: pure ------------------------------------------------------------------------


def parse_squeue(output: str, now: float) -> float:
    """Seconds left from ``squeue -h -j ID -o '%L|%e'``: time left (``[D-]HH:MM:SS``, ``MM:SS``),
    else the end time (local time, ``YYYY-MM-DDTHH:MM:SS``). ``ValueError`` with the reason."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if not lines:
        raise ValueError("squeue does not know this job (finished, or not visible to you)")
    left, _, end = lines[0].partition("|")
    left, end = left.strip(), end.strip()
    if left.upper() in ("UNLIMITED", "INFINITE") or end.upper() in ("UNLIMITED", "INFINITE"):
        raise ValueError("this job has no time limit")
    try:
        return _positive(parse_hms(left))
    except ValueError:
        pass
    try:
        return _positive(_local_time(end, "%Y-%m-%dT%H:%M:%S") - now)
    except ValueError:
        raise ValueError(f"squeue gave neither a time left nor an end time ({lines[0]!r})") from None


def parse_scontrol(output: str, now: float) -> float:
    """Seconds left from ``scontrol show job -o ID``: its ``EndTime`` (local time), unless
    ``TimeLimit`` is ``UNLIMITED``. ``ValueError`` with the reason."""
    fields = {}
    for word in output.split():
        name, equals, value = word.partition("=")
        if equals and name not in fields:
            fields[name] = value
    if not fields:
        raise ValueError("scontrol does not know this job")
    if fields.get("TimeLimit", "").upper() in ("UNLIMITED", "INFINITE"):
        raise ValueError("this job has no time limit")
    end = fields.get("EndTime", "")
    try:
        return _positive(_local_time(end, "%Y-%m-%dT%H:%M:%S") - now)
    except ValueError:
        raise ValueError(f"scontrol gave no usable EndTime ({end or 'none'!r})") from None


def parse_qstat(output: str, now: float) -> float:
    """Seconds left from ``qstat -f JOB`` (PBS Pro, OpenPBS, Torque). ``ValueError`` with the reason."""
    fields = _qstat_fields(output)
    if not fields:
        raise ValueError("qstat does not know this job")
    remaining = fields.get("Walltime.Remaining")
    if remaining:
        try:
            return _positive(float(remaining))
        except ValueError:
            pass
    limit_text = fields.get("Resource_List.walltime")
    if not limit_text:
        raise ValueError("this job has no walltime limit (no Resource_List.walltime)")
    limit = parse_hms(limit_text, bare=1)
    started = fields.get("stime") or fields.get("start_time")
    if started:
        try:
            start = _local_time(" ".join(started.split()), "%a %b %d %H:%M:%S %Y")
        except ValueError:
            try:
                start = float(started)  # Torque may give epoch seconds
            except ValueError:
                start = None
        if start is not None:
            return _positive(start + limit - now)
    used = fields.get("resources_used.walltime")
    if used:
        return _positive(limit - parse_hms(used, bare=1))
    raise ValueError("qstat gave the walltime limit but not when the job started")


def _qstat_fields(output: str) -> dict[str, str]:
    """``name = value`` lines; qstat folds long values onto lines that start with a tab."""
    fields: dict[str, str] = {}
    last = None
    for line in output.splitlines():
        if line.startswith("\t") and last is not None:
            fields[last] += line.strip()
            continue
        name, equals, value = line.strip().partition(" = ")
        if equals:
            last = name.strip()
            fields[last] = value.strip()
    return fields


def parse_hms(text: str, *, bare: float = 60) -> float:
    """``[D-]HH:MM:SS``, ``HH:MM:SS``, ``MM:SS`` in seconds; a bare number counts ``bare``
    seconds each (minutes for Slurm, seconds for PBS)."""
    text = text.strip()
    days, dash, rest = text.partition("-")
    if not dash:
        days, rest = "0", text
    parts = rest.split(":")
    if not text or len(parts) > 3 or not all(p.isdigit() for p in parts) or not days.isdigit():
        raise ValueError(f"not a duration: {text!r}")
    numbers = [int(p) for p in parts]
    if len(numbers) == 1:
        seconds = numbers[0] * bare
    elif len(numbers) == 2:
        seconds = numbers[0] * 60 + numbers[1]
    else:
        seconds = numbers[0] * 3600 + numbers[1] * 60 + numbers[2]
    return float(int(days) * 86400 + seconds)


def _local_time(text: str, layout: str) -> float:
    # Slurm and PBS print times in the local time zone of the command, which runs in this
    # process's environment (TZ included).
    return time.mktime(time.strptime(text.strip(), layout))


def _positive(seconds: float) -> float:
    if seconds != seconds:
        raise ValueError("not a number")
    return max(0.0, seconds)


# --- running the command ------------------------------------------------------------------


def _which(name: str, env: Mapping[str, str]) -> str | None:
    import shutil

    found = shutil.which(name, path=env.get("PATH") or os.defpath)
    if found:
        return found
    for directory in _FALLBACK_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _runner(env: Mapping[str, str]) -> Run:
    def run(command: list[str]) -> str:
        import subprocess

        done = subprocess.run(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"exit {done.returncode}: {detail}")
        return done.stdout

    return run


def _describe(exc: BaseException) -> str:
    import subprocess

    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer within {_TIMEOUT:g}s"
    return str(exc) or type(exc).__name__
