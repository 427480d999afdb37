"""Token exchange (QLAM_AUTH_FLOW=token-exchange) end to end: subject tokens minted by an identity
provider we did not write (npm's oauth2-mock-server), exchanged at the real sandbox by real
qlam-hpc processes sharing one cache."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

import leak_check
from conftest import FAST_RETRY, run_cli
from crowd import Crowd, json_lines
from oidc_issuers import GitHubRunner, MockOAuth2Server
from qlam_hpc import Settings, TokenProvider
from qlam_hpc._errors import SubjectTokenError
from qlam_hpc.sandbox import Sandbox, SandboxClient, SandboxConfig, SandboxUser

CLIENT = SandboxClient("ci-exchanger", "ci-exchanger-secret-0123456789", scopes=("read:tasks",))
ADA = SandboxUser("auth0|sandbox-user-1", "ada@example.org", "Ada Lovelace")


@pytest.fixture(scope="module")
def issuer() -> Iterator[MockOAuth2Server]:
    server = MockOAuth2Server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def exchange_idp(issuer: MockOAuth2Server) -> Iterator[Sandbox]:
    config = SandboxConfig(clients=(CLIENT,), users=(ADA,), exchange_issuers=(issuer.url,))
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def idp(exchange_idp: Sandbox) -> Iterator[Sandbox]:
    exchange_idp.reset()
    yield exchange_idp
    exchange_idp.reset()


def mint(issuer: MockOAuth2Server, audience: str | None, subject: str, **extra: object) -> str:
    """A subject token from the third-party issuer, for ``audience``; known to the leak check."""
    token = issuer.mint(subject, audience, **extra)  # type: ignore[arg-type]
    leak_check.SECRETS.learn(token.rsplit(".", 1)[1], "subject token")
    return token


def write_token(path: Path, token: str, check: leak_check.Any = None) -> Path:
    path.write_text(token + "\n", encoding="utf-8")
    return path


@pytest.fixture
def subject_file(
    issuer: MockOAuth2Server, idp: Sandbox, tmp_path: Path, leak_check: leak_check.Any
) -> Iterator[Callable[..., Path]]:
    """``subject_file(name, subject, **claims)``: a subject token for the sandbox from the third-party
    issuer, written to tmp_path/NAME-token (again, if it exists: as a kubelet rotates it). The leak
    check expects the subject token files the test wrote on purpose (tmp_path/*-token*)."""

    def write(name: str, subject: str, **extra: object) -> Path:
        return write_token(tmp_path / f"{name}-token", mint(issuer, idp.url, subject, **extra))

    yield write
    for path in tmp_path.glob("*-token*"):
        leak_check.expect(path)


@pytest.fixture
def site_command(tmp_path: Path, subject_file: Callable[..., Path]) -> list[str]:
    """A site command, as words, that prints a token for the subject ``site:batch`` (and a note
    on stderr); it fails unless it got its arguments word for word, as no shell would pass them."""
    token_file = subject_file("site", "site:batch")
    script = tmp_path / "mint.py"
    script.write_text(
        "import sys\n"
        "assert sys.argv[1:] == ['two words', '$HOME;'], sys.argv\n"
        f"print(open({str(token_file)!r}).read().strip())\n"
        "print('the site says hello', file=sys.stderr)\n"
    )
    return [sys.executable, str(script), "two words", "$HOME;"]


def from_file(env: dict[str, str], token_file: Path) -> dict[str, str]:
    """``env`` with the subject token read from ``token_file``."""
    return {**env, "QLAM_SUBJECT_TOKEN_FILE": str(token_file)}


@pytest.fixture
def base_env(idp: Sandbox, cache_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_", "ACTIONS_"))}
    clean.pop("GITLAB_CI", None)
    return {**clean, **idp.env(flow="token-exchange"), "QLAM_TOKEN_CACHE_DIR": str(cache_dir)}


def subject_of(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["sub"])


def assert_nowhere(token: str, *places: str) -> None:
    for place in places:
        assert token not in place
        assert token.rsplit(".", 1)[1] not in place


def store_text(cache_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in cache_dir.rglob("*") if p.is_file())


@pytest.mark.slow
def test_100_processes_with_one_subject_token_cost_one_exchange(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str], tmp_path: Path, subject_file: Callable[..., Path]
) -> None:
    """100 qlam-hpc processes started together, one subject token file: the sandbox sees 1
    exchange, and every process prints the same token, for that subject."""
    token_file = subject_file("sa", "system:serviceaccount:lab:runner")
    env = from_file(base_env, token_file)
    idp.set_faults(latency=0.3)
    crowd = Crowd(tmp_path / "crowd", 100, ["token", "--json"], env)
    crowd.wait_ready()
    crowd.release()
    results = crowd.finish()
    assert [r.code for r in results] == [0] * 100, [r.err for r in results if r.code][:3]
    outputs = json_lines(results)
    assert len({o["access_token"] for o in outputs}) == 1
    stats = idp.stats()
    assert stats["token_exchanges"] == 1 and stats["token_requests"] == 1
    assert subject_of(outputs[0]["access_token"]) == f"exchange|{issuer.url}|system:serviceaccount:lab:runner"
    assert_nowhere(token_file.read_text().strip(), store_text(idp_cache(env)), *(r.err for r in results))


def idp_cache(env: dict[str, str]) -> Path:
    return Path(env["QLAM_TOKEN_CACHE_DIR"])


def test_two_subjects_share_one_cache_but_never_a_token(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str], tmp_path: Path, subject_file: Callable[..., Path]
) -> None:
    """Two workflows, one cache directory, interleaved processes: two exchanges, and each
    process gets its own subject's token."""
    files = {name: subject_file(name, f"repo:octo/{name}:ref:refs/heads/main") for name in ("alpha", "beta")}
    crowds = {
        name: Crowd(tmp_path / f"crowd-{name}", 10, ["token", "--json"], from_file(base_env, f))
        for name, f in files.items()
    }
    for crowd in crowds.values():
        crowd.wait_ready()
    for crowd in crowds.values():
        crowd.release()
    tokens = {}
    for name, crowd in crowds.items():
        results = crowd.finish()
        assert [r.code for r in results] == [0] * 10, [r.err for r in results if r.code][:3]
        seen = {o["access_token"] for o in json_lines(results)}
        assert len(seen) == 1
        tokens[name] = seen.pop()
        assert subject_of(tokens[name]) == f"exchange|{issuer.url}|repo:octo/{name}:ref:refs/heads/main"
    assert tokens["alpha"] != tokens["beta"]
    assert idp.stats()["token_exchanges"] == 2


def provider_for(env: dict[str, str], cache_dir: Path) -> TokenProvider:
    return TokenProvider(Settings.from_env(env, cache_dir=str(cache_dir)).with_(retry=FAST_RETRY))


def test_a_rotated_subject_token_file_is_read_again_at_the_next_exchange(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str], cache_dir: Path, subject_file: Callable[..., Path]
) -> None:
    """The file is read at each exchange, not once: after the kubelet (here, the test) rewrites
    it, the next exchange sends the new token (whose e-mail maps to a sandbox user)."""
    token_file = subject_file("sa", "runner")
    provider = provider_for(from_file(base_env, token_file), cache_dir)
    first = provider.get_token()
    assert subject_of(first) == f"exchange|{issuer.url}|runner"
    subject_file("sa", "runner", email=ADA.email)  # the same file, rewritten
    second = provider.invalidate(first)  # as after a 401: one new exchange, through the cache
    assert subject_of(second) == ADA.subject
    assert idp.stats()["token_exchanges"] == 2


def test_min_ttl_exchanges_again_before_expiry(
    idp: Sandbox, base_env: dict[str, str], subject_file: Callable[..., Path]
) -> None:
    """As for M2M: a cached token with less than --min-ttl left is exchanged again, once."""
    idp.set_faults(token_lifetime=120)
    env = from_file(base_env, subject_file("ci", "u"))
    assert run_cli("token", env=env).code == 0
    time.sleep(5)
    assert run_cli("token", "--min-ttl", "30", env=env).code == 0
    assert idp.stats()["token_exchanges"] == 1
    again = run_cli("token", "--min-ttl", "117", env=env)  # about 114 s are left: exchange again
    assert again.code == 0, again.err
    assert idp.stats()["token_exchanges"] == 2


def test_a_missing_subject_token_file_is_one_line_with_its_own_exit_code(
    idp: Sandbox, base_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "token"
    run = run_cli("token", env=from_file(base_env, missing))
    assert run.code == SubjectTokenError.exit_code == 19
    assert run.out == ""
    assert len(run.err.strip().splitlines()) == 1
    assert f"QLAM_SUBJECT_TOKEN_FILE {missing}" in run.err and "no such file" in run.err
    assert idp.stats()["token_requests"] == 0


def test_an_expired_subject_token_is_one_line_naming_its_source_and_never_the_token(
    idp: Sandbox, base_env: dict[str, str], subject_file: Callable[..., Path]
) -> None:
    token_file = subject_file("k8s", "u", lifetime=1)
    token = token_file.read_text().strip()
    time.sleep(1.2)
    run = run_cli("token", env=from_file(base_env, token_file))
    assert run.code == 19
    assert len(run.err.strip().splitlines()) == 1 and "expired at" in run.err and str(token_file) in run.err
    assert_nowhere(token, run.out, run.err)
    assert idp.stats()["token_requests"] == 0


def test_a_subject_token_the_identity_provider_refuses_is_asked_for_once(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str], tmp_path: Path, subject_file: Callable[..., Path]
) -> None:
    """A subject token for another audience: the refusal is one line (exit 4), repeated to the
    other processes from the store; a new token in the file is tried at once."""
    token_file = write_token(tmp_path / "ci-token", mint(issuer, "https://not-the-sandbox.example", "u"))
    env = from_file(base_env, token_file)
    runs = [run_cli("token", env=env) for _ in range(3)]
    assert [r.code for r in runs] == [4, 4, 4]
    assert "invalid_request" in runs[0].err and len(runs[0].err.strip().splitlines()) == 1
    assert idp.stats()["token_requests"] == 1
    subject_file("ci", "u")  # the same file, now with a token for the sandbox
    assert run_cli("token", env=env).code == 0
    assert idp.stats()["token_exchanges"] == 1


def test_a_site_command_is_run_without_a_shell_and_its_stdout_is_the_token(
    issuer: MockOAuth2Server, base_env: dict[str, str], site_command: list[str]
) -> None:
    run = run_cli("token", env={**base_env, "QLAM_SUBJECT_TOKEN_COMMAND": shlex.join(site_command)})
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|site:batch"


def test_a_site_command_that_hangs_is_stopped_at_the_timeout(
    idp: Sandbox, base_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**base_env, "QLAM_SUBJECT_TOKEN_COMMAND": "sleep 30", "QLAM_HTTP_TIMEOUT": "1"}
    started = time.monotonic()
    run = run_cli("token", env=env)
    assert run.code == 19 and "QLAM_SUBJECT_TOKEN_COMMAND (sleep) did not finish within 1s" in run.err
    assert time.monotonic() - started < 15


def test_github_actions_id_token_is_asked_for_with_the_identity_providers_audience(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str]
) -> None:
    runner = GitHubRunner(
        "runner-request-token-0123456789",
        lambda audience: mint(issuer, audience, "repo:octo/app:ref:refs/heads/main"),
    )
    try:
        env = {
            **base_env,
            "GITHUB_ACTIONS": "true",
            "ACTIONS_ID_TOKEN_REQUEST_URL": runner.url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-request-token-0123456789",
        }
        run = run_cli("token", env=env)
        assert run.code == 0, run.err
        assert runner.audiences and set(runner.audiences) == {idp.url}
        assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|repo:octo/app:ref:refs/heads/main"
        refused = run_cli("token", env={**env, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"})
        assert refused.code == 19 and "id-token: write" in refused.err
    finally:
        runner.stop()


def test_gitlab_ci_id_token_is_read_from_the_jobs_variable(
    issuer: MockOAuth2Server, idp: Sandbox, base_env: dict[str, str]
) -> None:
    token = mint(issuer, idp.url, "project_path:group/project:ref_type:branch:ref:main", email=ADA.email)
    run = run_cli("token", env={**base_env, "GITLAB_CI": "true", "QLAM_ID_TOKEN": token})
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == ADA.subject
    named = run_cli("token", env={**base_env, "GITLAB_CI": "true", "QLAM_SUBJECT_TOKEN_VARIABLE": "SITE_JWT"})
    assert named.code == 19 and "SITE_JWT" in named.err


def test_attribution_names_the_subject(
    issuer: MockOAuth2Server, base_env: dict[str, str], cache_dir: Path, subject_file: Callable[..., Path]
) -> None:
    from qlam_hpc._api._attribution import this_process

    token_file = subject_file("ci", "repo:octo/app:ref:refs/heads/main")
    provider = provider_for(from_file(base_env, token_file), cache_dir)
    principal = provider.principal()
    assert principal == {"subject": "repo:octo/app:ref:refs/heads/main", "issuer": issuer.url}
    assert this_process(principal)["qlam_hpc"]["principal"] == principal


def test_an_actor_token_is_sent_beside_the_subject_token(
    idp: Sandbox, base_env: dict[str, str], cache_dir: Path, subject_file: Callable[..., Path]
) -> None:
    from qlam_hpc._exchange import exchange_form, read_actor, read_subject

    actor_file = subject_file("actor", "scheduler")
    settings = Settings.from_env(
        {**from_file(base_env, subject_file("ci", "u")), "QLAM_ACTOR_TOKEN_FILE": str(actor_file)}
    )
    assert settings.subject_source is not None
    form = exchange_form(settings, read_subject(settings.subject_source), read_actor(settings))
    assert form["actor_token"] == actor_file.read_text().strip()
    assert (
        form["actor_token_type"]
        == form["subject_token_type"]
        == idp.env(flow="token-exchange")["QLAM_SUBJECT_TOKEN_TYPE"]
    )
    assert TokenProvider(settings.with_(cache_dir=str(cache_dir))).get_token()


def test_settings_name_one_source_and_refuse_several(base_env: dict[str, str], tmp_path: Path) -> None:
    from qlam_hpc._errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="not several"):
        Settings.from_env({**base_env, "QLAM_SUBJECT_TOKEN_FILE": "/x", "QLAM_SUBJECT_TOKEN_COMMAND": "site-token"})
    with pytest.raises(ConfigurationError, match="needs a subject token"):
        Settings.from_env(base_env)
    settings = Settings.from_env({**base_env, "QLAM_SUBJECT_TOKEN_TYPE": "", "QLAM_SUBJECT_TOKEN_FILE": "/x"})
    assert settings.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert "subject_token" not in repr(settings).replace("subject_token_type", "")


def _jwt(**claims: object) -> str:
    return jwt.encode({"iss": "https://issuer.example", "sub": "s", **claims}, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "empty"),
        ("not-a-jwt", "does not hold a JWT"),
        (_jwt(sub=""), "has no sub claim"),
        (_jwt(exp=1), "expired at 1970-01-01T00:00:01Z"),
        ("x" * (70 * 1024), "more than 64 KiB"),
        ("\u00e9t\u00e9", "not ASCII"),
    ],
)
def test_a_subject_token_that_is_no_usable_jwt_is_one_line_naming_the_file(
    tmp_path: Path, content: str, says: str
) -> None:
    from qlam_hpc._exchange import SubjectSource, read_subject

    path = tmp_path / "subject"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SubjectTokenError) as caught:
        read_subject(SubjectSource("file", str(path)))
    assert says in str(caught.value) and f"QLAM_SUBJECT_TOKEN_FILE {path}" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_failing_command_is_named_by_its_program_only(tmp_path: Path) -> None:
    """Its arguments may be anything (a site's options): the message names the program and the status."""
    from qlam_hpc._exchange import SubjectSource, read_subject

    with pytest.raises(SubjectTokenError, match=r"QLAM_SUBJECT_TOKEN_COMMAND \(false\) failed with exit status 1$"):
        read_subject(SubjectSource("command", "false --secret-looking-argument"))
    with pytest.raises(SubjectTokenError, match="no such command"):
        read_subject(SubjectSource("command", str(tmp_path / "missing-program")))


def test_sources_are_chosen_from_the_environment() -> None:
    from qlam_hpc._exchange import source_from_env

    github = {"ACTIONS_ID_TOKEN_REQUEST_URL": "https://runner/x?a=1", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t"}
    assert source_from_env(github, "https://idp").kind == "github"
    assert source_from_env(github, "https://idp").audience == "https://idp"
    assert source_from_env({**github, "QLAM_SUBJECT_TOKEN_AUDIENCE": "aud"}, "https://idp").audience == "aud"
    assert source_from_env({**github, "QLAM_SUBJECT_TOKEN_FILE": "/f"}, "x").kind == "file"  # explicit wins
    assert source_from_env({"GITLAB_CI": "true"}, "x").where == "QLAM_ID_TOKEN"
    from qlam_hpc._errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="id-token: write"):
        source_from_env({"GITHUB_ACTIONS": "true"}, "x")
    with pytest.raises(ConfigurationError, match="cannot be split"):
        source_from_env({"QLAM_SUBJECT_TOKEN_COMMAND": "site-token 'unclosed"}, "x")
