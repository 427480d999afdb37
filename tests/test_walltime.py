"""How long a batch job has left: the parsers of squeue, scontrol and qstat output, then real Slurm."""

from __future__ import annotations

import os
import sys
import time

import pytest

from qlam_hpc._walltime import (
    job_time_left,
    parse_hms,
    parse_qstat,
    parse_scontrol,
    parse_squeue,
    read_time_left,
)

NOW = time.mktime((2026, 11, 28, 12, 0, 0, 0, 0, -1))  # noon, local time, as Slurm prints


def _local(hour: int, minute: int = 0, second: int = 0, day: int = 28) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("1-02:03:04", 93784), ("02:03:04", 7384), ("4:55", 295), ("0:05", 5), ("30", 1800), ("0-00:00:00", 0)],
)
def test_slurm_time_formats_are_read_as_seconds(text, seconds):
    """[D-]HH:MM:SS, MM:SS and a bare number of minutes, as squeue prints them."""
    assert parse_hms(text) == seconds


@pytest.mark.parametrize("text", ["", "UNLIMITED", "1:2:3:4", "a:b", "-5", "1-"])
def test_anything_else_is_not_a_duration(text):
    """Words, four fields, negative or empty values are refused with ValueError."""
    with pytest.raises(ValueError):
        parse_hms(text)


# --- squeue -------------------------------------------------------------------------------


def test_squeue_time_left_is_used_first():
    """'%L|%e': the time left is taken as is, whatever the end time says."""
    assert parse_squeue("1:30:00|2026-11-28T13:30:00\n", NOW) == 5400


def test_squeue_end_time_is_the_fallback():
    """When %L is not a duration, the local end time minus now."""
    assert parse_squeue(f"INVALID|{_local(14, 15)}\n", NOW) == 2 * 3600 + 15 * 60


def test_squeue_without_a_time_limit_says_so():
    """UNLIMITED is 'no time limit', not a huge number."""
    with pytest.raises(ValueError, match="no time limit"):
        parse_squeue("UNLIMITED|Unknown\n", NOW)


def test_squeue_that_does_not_know_the_job_says_so():
    """Empty output: the job is gone or not visible."""
    with pytest.raises(ValueError, match="does not know"):
        parse_squeue("\n", NOW)


def test_squeue_garbage_is_refused():
    """Neither field usable: ValueError quoting the line."""
    with pytest.raises(ValueError, match="neither"):
        parse_squeue("NOT_SET|N/A\n", NOW)


def test_a_job_past_its_end_has_zero_left():
    """An end time in the past gives 0, never a negative time."""
    assert parse_squeue(f"INVALID|{_local(11)}", NOW) == 0


# --- scontrol -----------------------------------------------------------------------------

SCONTROL = (
    "JobId=812345 ArrayJobId=812300 ArrayTaskId=45 JobName=quantum-batch UserId=alice(1000) "
    "JobState=RUNNING Reason=None RunTime=00:10:00 TimeLimit=02:00:00 TimeMin=N/A "
    f"SubmitTime={_local(11, 40)} StartTime={_local(11, 50)} EndTime={_local(13, 50)} Deadline=N/A "
    "Partition=debug NodeList=node17 Command=/home/alice/array.sbatch\n"
)


def test_scontrol_end_time_gives_the_time_left():
    """EndTime (local time) minus now."""
    assert parse_scontrol(SCONTROL, NOW) == 110 * 60


def test_scontrol_unlimited_time_limit_says_so():
    """TimeLimit=UNLIMITED: no time limit, whatever EndTime holds."""
    text = SCONTROL.replace("TimeLimit=02:00:00", "TimeLimit=UNLIMITED")
    with pytest.raises(ValueError, match="no time limit"):
        parse_scontrol(text, NOW)


def test_scontrol_without_end_time_is_refused():
    """EndTime=Unknown (a pending job): ValueError naming it."""
    with pytest.raises(ValueError, match="EndTime"):
        parse_scontrol(SCONTROL.replace(f"EndTime={_local(13, 50)}", "EndTime=Unknown"), NOW)


# --- qstat (PBS Pro, Torque) ------------------------------------------------------------------

PBS_PRO = f"""Job Id: 4711.pbs01
    Job_Name = quantum-batch
    job_state = R
    Resource_List.ncpus = 1
    Resource_List.walltime = 02:00:00
    resources_used.walltime = 00:09:00
    stime = {time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(NOW - 600))}
    Variable_List = PBS_O_HOME=/home/alice,PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=alice,PBS_O_PATH=/usr/bin:
\t/bin,PBS_O_SHELL=/bin/bash
"""


def test_pbs_pro_start_time_plus_walltime_gives_the_time_left():
    """stime + Resource_List.walltime - now (resources_used lags, so it is not preferred)."""
    assert parse_qstat(PBS_PRO, NOW) == 7200 - 600


def test_pbs_without_start_time_uses_walltime_used():
    """No stime: the limit minus resources_used.walltime."""
    text = "\n".join(line for line in PBS_PRO.splitlines() if "stime" not in line)
    assert parse_qstat(text, NOW) == 7200 - 540


def test_torque_walltime_remaining_is_used_first():
    """Torque's Walltime.Remaining (seconds) wins over everything else."""
    assert parse_qstat(PBS_PRO + "    Walltime.Remaining = 3000\n", NOW) == 3000


def test_pbs_without_a_walltime_says_so():
    """No Resource_List.walltime: no walltime limit."""
    text = "\n".join(line for line in PBS_PRO.splitlines() if "walltime" not in line)
    with pytest.raises(ValueError, match="no walltime"):
        parse_qstat(text, NOW)


def test_pbs_folded_lines_are_joined():
    """Long values folded onto tab-started lines do not break the fields after them."""
    folded = PBS_PRO.replace("    Resource_List.walltime = 02:00:00\n", "") + "    Resource_List.walltime = 02:00:00\n"
    assert parse_qstat(folded, NOW) == 7200 - 600


# --- reading it: sources and reasons --------------------------------------------------------


def _never(command):
    raise AssertionError(f"ran {command}")


def test_outside_a_job_the_answer_is_none_with_a_reason():
    """No SLURM_JOB_ID or PBS_JOBID: None, and the reason says so; nothing is run."""
    left = read_time_left({"PATH": "/usr/bin"}, run=_never)
    assert left.seconds is None and "not inside a Slurm or PBS job" in left.reason
    assert job_time_left({"PATH": os.defpath}) is None


def test_slurm_job_end_time_needs_no_command():
    """SLURM_JOB_END_TIME (Slurm >= 23.02) is used without asking the controller."""
    left = read_time_left({"SLURM_JOB_ID": "7", "SLURM_JOB_END_TIME": str(int(NOW) + 900)}, now=NOW, run=_never)
    assert left == (900.0, "SLURM_JOB_END_TIME", None)


def test_squeue_is_asked_once_with_the_jobs_own_id(tmp_path):
    """Without the variable: one squeue -h -j $SLURM_JOB_ID -o '%L|%e', found on PATH."""
    (tmp_path / "squeue").write_text("#!/bin/sh\n")
    (tmp_path / "squeue").chmod(0o755)
    calls = []

    def run(command):
        calls.append(command)
        return "45:00|2026-11-28T12:45:00\n"

    left = read_time_left({"SLURM_JOB_ID": "812345", "PATH": str(tmp_path)}, now=NOW, run=run)
    assert left == (2700.0, "squeue", None)
    assert calls == [[str(tmp_path / "squeue"), "-h", "-j", "812345", "-o", "%L|%e"]]


def test_a_failing_squeue_gives_none_with_its_message(tmp_path):
    """squeue exits non-zero: None, and the reason carries its last stderr line."""
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    squeue.chmod(0o755)
    left = read_time_left({"SLURM_JOB_ID": "9", "PATH": str(tmp_path)})
    assert left.seconds is None
    assert "Unable to contact slurm controller" in left.reason


def test_a_slurm_job_without_a_time_limit_gives_none_with_the_reason(tmp_path):
    """squeue says UNLIMITED: None, 'no time limit'."""
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho 'UNLIMITED|Unknown'\n")
    squeue.chmod(0o755)
    left = read_time_left({"SLURM_JOB_ID": "9", "PATH": str(tmp_path)})
    assert left.seconds is None and "no time limit" in left.reason


def test_a_pbs_job_asks_qstat(tmp_path):
    """PBS_JOBID: one qstat -f $PBS_JOBID, parsed."""
    qstat = tmp_path / "qstat"
    qstat.write_text(f"#!/bin/sh\ncat <<'EOF'\n{PBS_PRO}EOF\n")
    qstat.chmod(0o755)
    left = read_time_left({"PBS_JOBID": "4711.pbs01", "PATH": f"{tmp_path}:/usr/bin:/bin"}, now=NOW)
    assert left == (6600.0, "qstat", None)


# --- under a real Slurm -------------------------------------------------------------------------

PROBE = """#!/bin/bash
#SBATCH --time=7
#SBATCH --output={out}
{python} -c 'from qlam_hpc._walltime import read_time_left; print(tuple(read_time_left()))'
env -u SLURM_JOB_END_TIME {python} -c 'from qlam_hpc._walltime import read_time_left; print(tuple(read_time_left()))'
"""


@pytest.mark.slow
@pytest.mark.slurm
def test_inside_a_slurm_job_the_time_left_is_its_time_limit(tmp_path):
    """A job with --time=7 asks from inside: about 7 minutes left, read from Slurm itself."""
    from slurm_service import local_slurm, stop_local_slurm

    slurm = local_slurm()
    try:
        out = tmp_path / "probe.out"
        script = tmp_path / "probe.sbatch"
        script.write_text(PROBE.format(out=out, python=sys.executable))
        job = slurm.sbatch(str(script))
        slurm.wait(job, timeout=120)
        lines = out.read_text().splitlines()
        for line in lines:
            seconds, source, reason = eval(line)  # our own repr of a tuple
            assert reason is None and source in ("SLURM_JOB_END_TIME", "squeue")
            assert 7 * 60 - 60 < seconds <= 7 * 60
        assert len(lines) == 2, lines
    finally:
        stop_local_slurm(slurm)
