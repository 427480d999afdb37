"""Every command and code block in README.md, docs/ and examples/ is run, against a sandbox.

A documented line that does not work is a failing test. The harness reads the fenced
blocks of the markdown files (``bash``, ``sh``, ``python``; ``text``, ``json`` and other
blocks are output, not code) and the scripts in examples/, and runs each one in a fresh
directory with a throw-away ``HOME``, as a reader who copies it would:

* a block that starts its own sandbox (``qlam-hpc sandbox``) runs as written, with no
  QLAM settings in its environment; whatever it leaves running is stopped afterwards;
* any other block runs with a sandbox's settings exported (and in ``./sandbox.env``,
  the file ``qlam-hpc sandbox --env-file`` writes), a task definition in ``./job.json``
  and its own token cache;
* bash blocks run under ``set -euo pipefail``: a failing line fails the block.

An HTML comment right before a block says when it needs more (the whole vocabulary):

    <!-- doc-test: syntax-only (why: e.g. needs a real QLAM account) -->
        checked with ``bash -n`` or ``compile()`` only; the reason is required
    <!-- doc-test: continues -->
        runs in the same shell or interpreter as the block of its language before it
        in the file (a walkthrough), after it
    <!-- doc-test: setup task -->
        a created task: $TOKEN, $TASKS (the tasks URL), $AUTH (the Authorization
        header), $TASK_ID, $GROUP_A and $GROUP_B; in Python ``token`` and ``base_url``
    <!-- doc-test: setup device -->
        user context: the sandbox's device-login client, logins approved at once
    <!-- doc-test: setup slurm -->
        the local Slurm cluster the test services start (``SLURM_CONF``), ``examples/`` in
        the working directory and the sandbox's settings in ``~/.config/qlam/credentials``
        (0600), where the batch scripts read them
    <!-- doc-test: setup github -->  (also gitlab, kubernetes, site-command)
        token exchange: a sandbox that trusts a loopback issuer, and what that CI system
        gives a job (``tests/doc_federation.py``)

The scripts in examples/ have no markdown to carry a comment: ``EXAMPLES`` below says
how each runs. A block whose tool is not installed here (jq, openssl, aws, ...) is
skipped with that reason. The counts of each kind are printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import doc_federation
from qlam_hpc.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
SETUPS = ("task", "device", "slurm", *doc_federation.SETUPS)
TIMEOUT = 120  # seconds for one block, or one walkthrough of blocks
BIN = str(Path(sys.executable).parent)

# How the example scripts run: with the credentials in the file they read (QLAM_CREDENTIALS,
# 0600) and nothing in the environment, or in user context after a login.
EXAMPLES = {
    "array-bash.sbatch": "credentials",
    "array-pbs.sh": "credentials",
    "array-python.sbatch": "credentials",
    "prefetch.sbatch": "credentials",
    "array-user-context.sbatch": "user-context",
    "array_task.py": "environment",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<text>.*?)\s*-->$")
TOOLS = ("jq", "openssl", "aws", "moto_server", "curl", "findmnt", "sbatch", "vault")

COUNTS: Counter = Counter()
SKIPS: list[str] = []


@dataclass
class Block:
    path: Path
    line: int
    lang: str  # bash or python
    code: str
    marker: str | None = None
    continues: list[Block] = field(default_factory=list)  # the blocks that continue this one

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{path}:{self.line}"

    @property
    def kind(self) -> str:
        if self.marker is None:
            return "run"
        return self.marker.split()[0].split("(")[0]

    @property
    def setup(self) -> str | None:
        return self.marker.split()[1] if self.kind == "setup" else None

    @property
    def starts_a_sandbox(self) -> bool:
        return re.search(r"^[^#]*\bqlam-hpc sandbox\b", self.code, re.M) is not None


def read_blocks(path: Path) -> tuple[list[Block], Counter]:
    """The code blocks of a markdown file, with the marker before each; and a count of the
    blocks that are not code, by their language."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    other: Counter = Counter()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match["indent"], match["fence"], match["lang"].lower()
        j, body = i + 1, []
        while j < len(lines) and not re.fullmatch(re.escape(fence[0]) + f"{{{len(fence)},}}[ \t]*", lines[j].strip()):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        found = MARKER.match(lines[k].strip()) if k >= 0 else None
        if lang in LANGUAGES:
            blocks.append(Block(path, i + 1, LANGUAGES[lang], "\n".join(body) + "\n", found["text"] if found else None))
        else:
            other[lang or "plain"] += 1
        i = j + 1
    return blocks, other


def _collect() -> tuple[list[Block], list[Block], Counter]:
    """Blocks that run (each with those that continue it), blocks that are only checked,
    and the blocks that are not code."""
    runnable: list[Block] = []
    checked: list[Block] = []
    other: Counter = Counter()
    for path in DOCS:
        blocks, not_code = read_blocks(path)
        other += not_code
        last: dict[str, Block] = {}
        for block in blocks:
            if block.kind == "syntax-only":
                checked.append(block)
            elif block.kind == "continues" and block.lang in last:
                head = last[block.lang]
                head.continues.append(block)
            else:
                runnable.append(block)
                last[block.lang] = block
    return runnable, checked, other


RUNNABLE, CHECKED, NOT_CODE = _collect()


# --- the markers ----------------------------------------------------------------------------------


def _all_blocks() -> list[Block]:
    return [block for path in DOCS for block in read_blocks(path)[0]]


def test_every_marker_is_one_the_harness_knows():
    """A typo in a marker would silently run or skip a block: each one must parse."""
    wrong = []
    for block in _all_blocks():
        text = block.marker
        if text is None or text == "continues":
            continue
        if text.startswith("syntax-only"):
            if not re.fullmatch(r"syntax-only \(\S.*\)", text):
                wrong.append(f"{block.where}: syntax-only needs its reason in parentheses: {text!r}")
        elif text.startswith("setup "):
            if text.split(None, 1)[1] not in SETUPS:
                wrong.append(f"{block.where}: unknown setup {text!r} (known: {', '.join(SETUPS)})")
        else:
            wrong.append(f"{block.where}: unknown doc-test marker {text!r}")
    first = {path: read_blocks(path)[0] for path in DOCS}
    for blocks in first.values():
        seen = set()
        for block in blocks:
            if block.marker == "continues" and block.lang not in seen:
                wrong.append(f"{block.where}: 'continues' but no {block.lang} block before it")
            if block.kind != "syntax-only":
                seen.add(block.lang)
    assert not wrong, "\n".join(wrong)


def test_the_harness_reads_code_markers_and_leaves_output_alone(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent("""\
        ```bash
        echo one
        ```
        ```text
        output
        ```
        <!-- doc-test: syntax-only (needs a real QLAM account) -->

        ```python
        print("two")
        ```
        - a list item with a block:

          ```sh
          echo three
          ```
        """)
    )
    blocks, other = read_blocks(page)
    assert [(b.line, b.lang, b.code, b.kind) for b in blocks] == [
        (1, "bash", "echo one\n", "run"),
        (9, "python", 'print("two")\n', "syntax-only"),
        (14, "bash", "echo three\n", "run"),
    ]
    assert other == Counter(text=1)


def test_a_failing_line_fails_its_block(tmp_path):
    block = Block(tmp_path / "page.md", 7, "bash", "true\nfalse\necho never\n")
    with pytest.raises(pytest.fail.Exception, match="exited 1"):
        _run_bash([block], _base_env(tmp_path), tmp_path)


def test_every_page_is_read():
    assert {path.name for path in DOCS} >= {"README.md", "credentials.md", "hpc.md", "sandbox.md", "site-install.md"}
    assert len(RUNNABLE) > 20 and len(CHECKED) > 10


# --- syntax only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", CHECKED, ids=lambda block: block.where)
def test_block_parses(block: Block):
    """Blocks for a real account or cluster are not run, but they must still be valid code."""
    _check_syntax(block.code, block.lang, block.where)
    COUNTS["syntax-only"] += 1


def _check_syntax(code: str, lang: str, where: str) -> None:
    if lang == "python":
        compile(code, where, "exec")
        return
    done = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{where}: bash -n: {done.stderr.strip()}"


# --- run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp():
    """One sandbox for the blocks that do not start their own: short tasks, device logins
    approved at once (nobody is there to open a browser)."""
    with Sandbox(SandboxConfig.default(task_duration=0.3, auto_approve=True)) as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    """Print the counts of each kind once the run is over."""
    request.config.pluginmanager.register(_Summary(), "doc-test-summary")
    yield


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):  # a pytest hook
        if not COUNTS and not SKIPS:
            return
        not_code = ", ".join(f"{n} {lang}" for lang, n in sorted(NOT_CODE.items()))
        failed = f", {COUNTS['failed']} failed" if COUNTS["failed"] else ""
        terminalreporter.write_line(
            f"doc-test: {COUNTS['run']} blocks run, {COUNTS['scripts']} example scripts run, "
            f"{COUNTS['syntax-only']} blocks syntax-checked only (each marked with its reason), "
            f"{len(SKIPS)} skipped{failed}; not code: {not_code}"
        )
        for reason in SKIPS:
            terminalreporter.write_line(f"doc-test: skipped {reason}")


@pytest.mark.leak_check_expect("sandbox.env", ".doc-test*", kinds=["client secret", "access token"])  # docs' env, I/O
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.where)
@pytest.mark.leak_check_expect("home/.config/qlam/credentials", kinds=["client secret"])  # setup slurm
def test_block_runs(block: Block, idp, tmp_path):
    """What a reader copies works: the block (and those that continue it) exits 0."""
    blocks = [block, *block.continues]
    for each in blocks:
        _check_syntax(each.code, each.lang, each.where)
    env, variables = _environment(block, idp, tmp_path)
    try:
        if block.lang == "python":
            _run_python(blocks, env, variables, tmp_path)
        else:
            _run_bash(blocks, env, tmp_path)
    except pytest.skip.Exception:
        raise
    except BaseException:
        COUNTS["failed"] += len(blocks)
        raise
    COUNTS["run"] += len(blocks)


@pytest.mark.leak_check_expect(
    "credentials", ".doc-test.log", kinds=["client secret", "access token"]
)  # docs' env, I/O
@pytest.mark.parametrize("name", sorted(EXAMPLES), ids=lambda name: f"examples/{name}")
def test_example_runs(name: str, idp, tmp_path):
    """The example scripts run outside a scheduler too (task 0 of a local 'array'): one task
    submitted, completed, its results saved."""
    script = ROOT / "examples" / name
    _check_syntax(script.read_text(), "python" if name.endswith(".py") else "bash", f"examples/{name}")
    how = EXAMPLES[name]
    idp.reset()
    env = _base_env(tmp_path)
    if how == "credentials":
        credentials = tmp_path / "credentials"
        credentials.write_text("".join(f"{k}={v}\n" for k, v in idp.env().items()))
        credentials.chmod(0o600)
        env |= {
            "QLAM_CREDENTIALS": str(credentials),
            "QLAM_PYTHON": sys.executable,
            "QLAM_TASK_SCRIPT": str(ROOT / "examples" / "array_task.py"),
        }
    elif how == "user-context":
        settings = tmp_path / "user-context"
        settings.write_text("".join(f"{k}={v}\n" for k, v in idp.env(flow="device").items()))
        settings.chmod(0o644)
        env |= {"QLAM_SETTINGS": str(settings)}
        login = _run([f"set -a; . {settings}; set +a; qlam-hpc auth login"], env, tmp_path, "the login before it")
        assert login.returncode == 0, login.stdout
    else:
        env |= idp.env()
    command = [sys.executable, str(script)] if name.endswith(".py") else ["bash", str(script)]
    done = _run(command, env, tmp_path, f"examples/{name}", shell=False)
    COUNTS["failed" if done.returncode else "scripts"] += 1
    assert done.returncode == 0, f"examples/{name} exited {done.returncode}:\n{done.stdout[-3000:]}"
    if name != "prefetch.sbatch":
        saved = list((tmp_path / "results").glob("*.json"))
        assert saved and json.loads(saved[0].read_text()), "no results saved"


# --- how a block runs -----------------------------------------------------------------------------


def _base_env(tmp_path: Path) -> dict[str, str]:
    """Nothing of this machine's QLAM settings, scheduler or home: a reader's fresh shell."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    keep = {
        k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_", "VAULT_", "AWS_"))
    }
    return {
        **keep,
        "HOME": str(home),
        "PATH": f"{BIN}:{keep.get('PATH', '/usr/bin:/bin')}",
        "EDITOR": "true",  # a block that opens an editor gets one that saves nothing
        "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _environment(block: Block, idp: Sandbox, tmp_path: Path) -> tuple[dict[str, str], dict]:
    """The environment of a block (or walkthrough), and the Python variables its setup defines."""
    idp.reset()  # faults and stats a block before this one set
    env = _base_env(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps(JOB))
    if block.starts_a_sandbox:
        del env["QLAM_TOKEN_CACHE_DIR"]  # as written: where it says, or the default in this HOME
        return env, {}
    if block.setup in doc_federation.SETUPS:
        return doc_federation.environment(block.setup, tmp_path, env), {}
    settings = idp.env(flow="device") if block.setup == "device" else idp.env()
    # As `qlam-hpc sandbox` exports it: the owner's token for the control routes.
    settings = {**settings, "QLAM_SANDBOX_CONTROL_TOKEN": idp.control_token}
    env |= settings
    (tmp_path / "sandbox.env").write_text("".join(f"export {k}={v}\n" for k, v in settings.items()))
    variables: dict = {}
    if block.setup == "slurm":
        env |= _slurm_jobs(idp, env, tmp_path)
    if block.setup == "task":
        variables = _a_task(idp)
        env |= {k: v for k, v in variables.items() if k.isupper()}
    return env, variables


def _slurm_jobs(idp: Sandbox, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """What a block that submits jobs to the local cluster needs (``setup slurm``)."""
    from slurm_service import local_slurm

    cluster = local_slurm()  # the running cluster: its skip reason names Slurm, which CI fails on
    credentials = Path(env["HOME"]) / ".config" / "qlam" / "credentials"
    credentials.parent.mkdir(parents=True, exist_ok=True)
    lines = {**idp.env(), "QLAM_TOKEN_CACHE_DIR": env["QLAM_TOKEN_CACHE_DIR"]}
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(f"{name}='{value}'\n" for name, value in lines.items())
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return {"SLURM_CONF": str(cluster.conf)}


JOB = {
    "program_language": "squin",
    "programs": [{"content": "circuit ok"}],
    "subtasks": [{"program_index": 0, "num_shots": 10}],
}


def _a_task(idp: Sandbox) -> dict:
    form = {
        "grant_type": "client_credentials",
        "client_id": idp.client.client_id,
        "client_secret": idp.client.client_secret,
        "audience": idp.audience,
    }
    token = httpx.post(idp.token_url, data=form).raise_for_status().json()["access_token"]
    tasks = f"{idp.url}/v2/squin-256q/tasks"
    auth = {"Authorization": f"Bearer {token}"}
    groups = ["5b1c7f5e-2f63-4c3e-9d0b-1f1f8a6e2a10", "7d2e8a6f-3a74-4d4f-8e1c-2a2a9b7f3b21"]
    created = [
        httpx.post(tasks, json={**JOB, "group_id": group}, headers=auth).raise_for_status().json() for group in groups
    ]
    return {
        "TOKEN": token,
        "TASKS": tasks,
        "AUTH": f"Authorization: Bearer {token}",
        "TASK_ID": created[0]["id"],
        "GROUP_A": groups[0],
        "GROUP_B": groups[1],
        "token": token,
        "base_url": idp.url,
    }


def _run(command, env: dict, cwd: Path, what: str, *, shell: bool = True) -> subprocess.CompletedProcess:
    """Run in a session of its own, output to a file (a background sandbox keeps no pipe
    open), then stop whatever it left running."""
    log = cwd / ".doc-test.log"
    argv = ["bash", "-c", "\n".join(command)] if shell else command
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _stop_group(process.pid)
    output = log.read_text(errors="replace")
    if code is None:
        pytest.fail(f"{what}: still running after {TIMEOUT} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(argv, code, output, "")


def _stop_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            import time

            time.sleep(0.05)


def _run_bash(blocks: list[Block], env: dict, tmp_path: Path) -> None:
    script = ["set -euo pipefail"]
    for block in blocks:
        script += [f"echo '>>> doc-test block {block.where}'", block.code]
    done = _run(script, env, tmp_path, blocks[0].where)
    if done.returncode != 0:
        _skip_if_tool_missing(done.stdout, blocks[0].where)
        last = [line for line in done.stdout.splitlines() if line.startswith(">>> doc-test block ")]
        where = last[-1].rsplit(" ", 1)[1] if last else blocks[0].where
        pytest.fail(f"{where} exited {done.returncode}:\n{done.stdout[-3000:]}", pytrace=False)


RUNNER = textwrap.dedent(
    """
    import json, sys
    blocks, variables = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__", **variables}
    for where, code in blocks:
        print(">>> doc-test block " + where, flush=True)
        exec(compile(code, where, "exec"), namespace)
    """
)


def _run_python(blocks: list[Block], env: dict, variables: dict, tmp_path: Path) -> None:
    program = tmp_path / ".doc-test-blocks.json"
    program.write_text(
        json.dumps([[[b.where, b.code] for b in blocks], {k: v for k, v in variables.items() if k.islower()}])
    )
    done = _run([sys.executable, "-c", RUNNER, str(program)], env, tmp_path, blocks[0].where, shell=False)
    if done.returncode != 0:
        last = [line for line in done.stdout.splitlines() if line.startswith(">>> doc-test block ")]
        where = last[-1].rsplit(" ", 1)[1] if last else blocks[0].where
        pytest.fail(f"{where} exited {done.returncode}:\n{done.stdout[-3000:]}", pytrace=False)


def _skip_if_tool_missing(output: str, where: str) -> None:
    for tool in TOOLS:
        if re.search(rf"\b{re.escape(tool)}: (command )?not found", output) and shutil.which(tool) is None:
            SKIPS.append(f"{where}: needs {tool}, not installed here")
            pytest.skip(f"{where} needs {tool}, which is not installed here")
