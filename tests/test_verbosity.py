"""-v and -vv: the CLI's own info lines appear with -v and only then (the lazy logging set-up
once put the level back to warnings on the first message, hiding every -v line)."""

from __future__ import annotations

from conftest import run_cli


def test_v_shows_qlam_hpcs_info_lines_and_the_default_does_not(env) -> None:
    wrong = {**env, "QLAM_CLIENT_SECRET": "not-the-secret-at-all"}
    assert run_cli("token", env=wrong).code == 4  # the refusal is recorded for the other processes
    quiet = run_cli("token", env=wrong)
    verbose = run_cli("-v", "token", env=wrong)
    assert quiet.code == verbose.code == 4
    assert "qlam-hpc: info:" not in quiet.err
    assert "qlam-hpc: info: not asking the identity provider again" in verbose.err, verbose.err
    assert verbose.err.strip().splitlines()[-1].startswith("qlam-hpc: error:")


def test_vv_adds_debug_lines(env) -> None:
    result = run_cli("-vv", "token", env=env)
    assert result.code == 0, result.err
    assert "qlam-hpc: debug:" in result.err or "qlam-hpc: info:" in result.err
