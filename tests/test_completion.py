"""Shell completion through the installed ``qlam-hpc`` script: click's protocol must get past
the project's entry point (the fast token path, the one exit point of ``_app.run``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import QLAM_HPC

BIN = str(Path(QLAM_HPC).parent)


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "_QLAM_HPC"))}
    return {**base, "PATH": f"{BIN}:{base.get('PATH', '/usr/bin:/bin')}", **extra}


def _bash_complete(line: str) -> list[str]:
    """What bash offers for ``line`` (ending where TAB is pressed), through the function that
    ``_QLAM_HPC_COMPLETE=bash_source qlam-hpc`` registers with ``complete``."""
    script = f"""
        set -e
        eval "$(_QLAM_HPC_COMPLETE=bash_source qlam-hpc)"
        complete -p qlam-hpc >/dev/null            # registered for the command
        line={line!r}
        read -ra COMP_WORDS <<< "$line"
        [[ $line == *' ' ]] && COMP_WORDS+=('')
        COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
        COMPREPLY=()
        _qlam_hpc_completion qlam-hpc "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script], env=_env(), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [word for word in done.stdout.splitlines() if word]


def test_bash_completes_a_command_name():
    assert _bash_complete("qlam-hpc aut") == ["auth"]


def test_bash_lists_the_subcommands_of_auth():
    assert _bash_complete("qlam-hpc auth ") == ["check", "clear", "keep-fresh", "login", "logout", "status"]


def test_bash_lists_every_command_including_the_lazily_imported_ones():
    offered = _bash_complete("qlam-hpc ")
    assert {"token", "auth", "tasks", "api", "doctor", "sandbox", "demo"} <= set(offered)


def test_bash_completes_options_of_token():
    assert {"--json", "--header", "--min-ttl"} <= set(_bash_complete("qlam-hpc token --"))


def test_completion_is_not_taken_for_a_token_request(tmp_path):
    """The protocol's variables never reach the token path: no output but completions, exit 0."""
    done = subprocess.run(
        [QLAM_HPC],
        env=_env(
            _QLAM_HPC_COMPLETE="bash_complete",
            COMP_WORDS="qlam-hpc token --m",
            COMP_CWORD="2",
            QLAM_TOKEN_CACHE_DIR=str(tmp_path),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "plain,--min-ttl\n", "")


def test_zsh_gets_its_script_and_its_answers():
    script = subprocess.run(
        [QLAM_HPC], env=_env(_QLAM_HPC_COMPLETE="zsh_source"), capture_output=True, text=True, timeout=30
    )
    assert script.returncode == 0 and "compdef _qlam_hpc_completion qlam-hpc" in script.stdout
    answer = subprocess.run(
        [QLAM_HPC],
        env=_env(_QLAM_HPC_COMPLETE="zsh_complete", COMP_WORDS="qlam-hpc auth st", COMP_CWORD="2"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert answer.returncode == 0 and answer.stdout.splitlines()[:2] == ["plain", "status"]


def test_zsh_parses_the_script():
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here")
    script = subprocess.run(
        [QLAM_HPC], env=_env(_QLAM_HPC_COMPLETE="zsh_source"), capture_output=True, text=True, timeout=30
    )
    parsed = subprocess.run(["zsh", "-n"], input=script.stdout, capture_output=True, text=True, timeout=30)
    assert parsed.returncode == 0, parsed.stderr
