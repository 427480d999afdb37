"""QLAM Shell compatibility: contexts of ~/.qsh/config.json, chosen and overridden by the environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from qlam_hpc import ConfigurationError, Settings, TokenProvider
from qlam_hpc._qsh import config_path, select_client
from qlam_hpc._secrets import EnvSecret
from qlam_hpc._settings import Secret, build_settings

# The exchange sandbox, its third-party issuer and its subject token files: exchange_idp, idp,
# issuer and subject_file are fixtures, used here by name.
from test_token_exchange import CLIENT, exchange_idp, idp, issuer, site_command, subject_file, subject_of

SECRET = "qsh-s3cr3t-never-shown"


def _provider(name: str = "m2m", **fields) -> dict:
    base = {
        "name": name,
        "provider": "oauth",
        "auth_base_url": "https://auth.example.com",
        "client_id": f"{name}-client",
        "client_secret": "env:QLAM_CLIENT_SECRET",
        "grant_type": "client_credentials",
        "audience": "https://api.example.com",
    }
    return {k: v for k, v in {**base, **fields}.items() if v is not None}


def _config(**contexts: list[dict]) -> dict:
    return {
        "current_context": "production",
        "contexts": [
            {
                "name": name,
                "qpu": "q",
                "defaults": {"api_base_url": f"https://{name}.api.example", "auth_provider": providers[0]["name"]},
                "auth_providers": providers,
            }
            for name, providers in contexts.items()
        ],
    }


CONFIG = _config(
    production=[_provider("device", grant_type="device_code"), _provider("m2m")],
    staging=[
        _provider("staging-m2m", auth_base_url="https://staging-auth.example.com", scope=["read:tasks", "write:tasks"])
    ],
)


@pytest.fixture
def home(tmp_path):
    """A home directory with ~/.qsh/config.json (mode 0600)."""
    directory = tmp_path / "home" / ".qsh"
    directory.mkdir(parents=True)
    path = directory / "config.json"
    path.write_text(json.dumps(CONFIG))
    path.chmod(0o600)
    return tmp_path / "home"


def _env(home, **variables: str) -> dict[str, str]:
    return {"HOME": str(home), **variables}


# --- choosing the context and its provider ---------------------------------------------------


def test_current_context_supplies_the_client(home):
    """Without QLAM_* variables, the current context's client_credentials provider is used."""
    settings = Settings.from_env(_env(home))
    assert settings.client_id == "m2m-client"
    assert settings.token_url == "https://auth.example.com/oauth/token"
    assert settings.audience == "https://api.example.com"
    assert isinstance(settings.client_secret, EnvSecret) and settings.client_secret.name == "QLAM_CLIENT_SECRET"


def test_the_default_provider_is_skipped_when_it_is_not_m2m(home):
    """The context's default auth_provider uses device_code: the client_credentials one is taken."""
    assert Settings.from_env(_env(home)).client_id == "m2m-client"


def test_a_context_with_only_a_device_login_selects_user_context(home):
    """A device_code provider alone means user context, with QuEra's organization scope for its tenant."""
    device = _provider("device", grant_type="device_code", client_secret=None, tenant="acme")
    (home / ".qsh" / "config.json").write_text(json.dumps(_config(production=[device])))
    origins: dict[str, str] = {}
    settings = build_settings(_env(home), {}, origins)
    assert settings.user_context and settings.client_id == "device-client"
    assert settings.scope == "openid email profile offline_access organization:acme"
    assert settings.device_authorization_url == "https://auth.example.com/oauth/device/code"
    assert settings.client_secret is None
    assert origins["auth_flow"].startswith("grant_type device_code of QLAM Shell context 'production'")


def test_qlam_auth_flow_device_picks_the_device_provider(home):
    """QLAM_AUTH_FLOW=device takes the context's device_code provider even where an M2M one exists."""
    settings = Settings.from_env(_env(home, QLAM_AUTH_FLOW="device"))
    assert settings.user_context and settings.client_id == "device-client"
    assert settings.revocation_url == "https://auth.example.com/oauth/revoke"


@pytest.mark.parametrize("how", ["variable", "override"])
def test_context_by_name(home, how):
    """QLAM_CONTEXT or --context picks another context; its scope list becomes a scope string."""
    if how == "variable":
        settings = Settings.from_env(_env(home, QLAM_CONTEXT="staging"))
    else:
        settings = Settings.from_env(_env(home), context="staging")
    assert settings.client_id == "staging-m2m-client"
    assert settings.token_url == "https://staging-auth.example.com/oauth/token"
    assert settings.scope == "read:tasks write:tasks"


def test_environment_overrides_the_file(home):
    """Each QLAM_* variable wins over the context's value; the rest still comes from the file."""
    settings = Settings.from_env(
        _env(home, QLAM_CLIENT_ID="env-client", QLAM_AUDIENCE="https://env.example", QLAM_CLIENT_SECRET=SECRET)
    )
    assert (settings.client_id, settings.audience) == ("env-client", "https://env.example")
    assert settings.token_url == "https://auth.example.com/oauth/token"
    assert settings.client_secret == Secret(SECRET)


def test_the_file_is_not_read_when_the_environment_names_the_client(home):
    """With QLAM_CLIENT_ID and AUTH_BASE_URL set (a batch job), config.json is not even parsed."""
    (home / ".qsh" / "config.json").write_text("{ not json")
    settings = Settings.from_env(_env(home, QLAM_CLIENT_ID="c", AUTH_BASE_URL="idp.example"))
    assert (settings.client_id, settings.audience) == ("c", "https://api.quera.com")


@pytest.mark.parametrize("variable", ["QSH_CONFIG", "QSH_CONFIG_DIR"])
def test_config_location_variables(tmp_path, variable):
    """QSH_CONFIG names the file, QSH_CONFIG_DIR its directory."""
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "config.json"
    path.write_text(json.dumps(CONFIG))
    path.chmod(0o600)
    value = str(path) if variable == "QSH_CONFIG" else str(path.parent)
    env = {"HOME": str(tmp_path / "nohome"), variable: value}
    assert config_path(env) == str(path)
    assert Settings.from_env(env).client_id == "m2m-client"


def test_origins_name_the_context(home):
    """build_settings says each value came from the QLAM Shell context, never showing a value."""
    origins: dict[str, str] = {}
    build_settings(_env(home, MY_SECRET=SECRET), {}, origins)
    where = f"QLAM Shell context 'production' in {home / '.qsh' / 'config.json'}"
    assert origins["client_id"] == origins["auth_base_url"] == origins["client_secret"] == where
    build_settings(_env(home, QLAM_CLIENT_SECRET=SECRET), {}, origins)
    assert origins["client_secret"] == "environment QLAM_CLIENT_SECRET"
    assert SECRET not in json.dumps(origins)


# --- what is missing is named -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "context", "message"),
    [
        (
            {**CONFIG, "current_context": None},
            None,
            "has no current_context: name one with --context or QLAM_CONTEXT (contexts: production, staging)",
        ),
        (CONFIG, "nope", "there is no context 'nope' in the QLAM Shell config"),
        (
            _config(production=[_provider("pw", grant_type="password")]),
            None,
            "has no auth provider with grant_type client_credentials, device_code or token_exchange "
            "(it has: pw (password))",
        ),
        (
            _config(production=[_provider(client_id=None)]),
            None,
            "QLAM_CLIENT_ID is not set (the M2M client id from your QLAM admin); QLAM Shell context 'production'",
        ),
        (_config(production=[_provider(auth_base_url=None)]), None, "AUTH_BASE_URL is not set"),
        (_config(production=[_provider(audience=7)]), None, "audience of auth provider 'm2m' in context 'production'"),
    ],
)
def test_missing_pieces_are_named(home, config, context, message):
    """No current context, an unknown context, no M2M provider, no client id or base URL: each is named."""
    (home / ".qsh" / "config.json").write_text(json.dumps(config))
    env = _env(home, QLAM_CONTEXT=context) if context else _env(home)
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        Settings.from_env(env)
    assert caught.value.exit_code == 3


def test_asking_for_a_context_without_a_file_is_an_error(tmp_path):
    """QLAM_CONTEXT with no config file says where it looked."""
    with pytest.raises(ConfigurationError, match=r"no QLAM Shell config at .*config\.json"):
        Settings.from_env({"HOME": str(tmp_path), "QLAM_CONTEXT": "production"})


def test_without_a_file_the_usual_error_remains(tmp_path):
    """No config file and no QLAM_CLIENT_ID: the familiar message, unchanged."""
    with pytest.raises(
        ConfigurationError, match=r"^QLAM_CLIENT_ID is not set \(the M2M client id from your QLAM admin\)$"
    ):
        Settings.from_env({"HOME": str(tmp_path)})


def test_invalid_json_is_named_without_its_content(home):
    """A broken config.json is one line naming the file and the position, never its text."""
    (home / ".qsh" / "config.json").write_text('{"client_secret": "' + SECRET + '", oops}')
    with pytest.raises(ConfigurationError, match="is not valid JSON") as caught:
        Settings.from_env(_env(home))
    assert SECRET not in str(caught.value)


def test_a_literal_secret_in_a_readable_file_is_refused(home):
    """A literal client_secret in a config.json readable by others is refused; env: references are fine."""
    path = home / ".qsh" / "config.json"
    path.write_text(json.dumps(_config(production=[_provider(client_secret=SECRET)])))
    path.chmod(0o644)
    with pytest.raises(
        ConfigurationError, match="holds a literal client_secret and is readable by group or others"
    ) as caught:
        Settings.from_env(_env(home))
    assert SECRET not in str(caught.value)
    path.chmod(0o600)
    assert Settings.from_env(_env(home)).client_secret.reveal() == SECRET
    path.write_text(json.dumps(CONFIG))
    path.chmod(0o644)
    assert Settings.from_env(_env(home)).client_id == "m2m-client"


def test_select_client_is_pure():
    """select_client works on parsed data and records the API URL of the context's defaults."""
    client = select_client(CONFIG, "/x/config.json", "staging")
    assert (client.context, client.provider, client.api_base_url) == (
        "staging",
        "staging-m2m",
        "https://staging.api.example",
    )


# --- end to end -------------------------------------------------------------------------------


def test_the_cli_uses_a_context(sandbox, tmp_path, env):
    """qlam-hpc --context NAME token gets a token for that context's client, secret via env:."""
    secret = env["QLAM_CLIENT_SECRET"]
    config = _config(
        production=[_provider(auth_base_url="https://unused.example.com")],
        sandbox=[
            _provider(
                "local",
                auth_base_url=sandbox.url,
                client_id=sandbox.client.client_id,
                client_secret="env:MY_SANDBOX_SECRET",
                audience=sandbox.audience,
            )
        ],
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    case = {k: v for k, v in env.items() if not k.startswith(("QLAM_CLIENT", "AUTH_BASE_URL"))}
    case.update(QSH_CONFIG=str(path), MY_SANDBOX_SECRET=secret)
    result = run_cli("--context", "sandbox", "token", env=case)
    assert result.code == 0, result.err
    assert run_cli("token", env={**case, "QLAM_CONTEXT": "sandbox"}).code == 0  # the warm path, by variable
    assert sandbox.stats()["token_requests"] == 1
    wrong = run_cli("--context", "nope", "token", env=case)
    assert wrong.code == 3 and "there is no context 'nope'" in wrong.err


# --- malformed and untrusted files -----------------------------------------------------------

MALFORMED = [
    ({"current_context": "production", "contexts": 5}, "contexts"),
    ({"current_context": "production", "contexts": {"production": {}}}, "contexts"),
    ({"current_context": "production", "contexts": [{"name": "production", "auth_providers": "x"}]}, "auth_providers"),
    ({"current_context": "production", "contexts": [{"name": "production", "auth_providers": 7}]}, "auth_providers"),
    (
        {
            "current_context": "production",
            "contexts": [{"name": "production", "defaults": [], "auth_providers": [_provider()]}],
        },
        "defaults",
    ),
    (
        {
            "current_context": "production",
            "contexts": [{"name": "production", "auth_providers": [_provider(name=["m2m"])]}],
        },
        "name",
    ),
    (
        {"current_context": "production", "contexts": [{"name": ["production"], "auth_providers": [_provider()]}]},
        "name",
    ),
    (
        {
            "current_context": "production",
            "contexts": [{"name": "production", "auth_providers": [_provider(grant_type=["client_credentials"])]}],
        },
        "grant_type",
    ),
    (
        {
            "current_context": "production",
            "contexts": [
                {"name": "production", "auth_providers": [_provider()], "defaults": {"auth_provider": {"x": 1}}}
            ],
        },
        "auth_provider",
    ),
    ({"current_context": ["production"], "contexts": []}, "current_context"),
]


@pytest.mark.parametrize(("config", "key"), MALFORMED)
def test_a_malformed_config_is_a_configuration_error_naming_the_file_and_key(home, config, key):
    path = home / ".qsh" / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(_env(home))
    message = str(caught.value)
    assert str(path) in message and key in message, message
    assert caught.value.exit_code == 3


def test_a_malformed_config_exits_3_from_the_cli(home):
    (home / ".qsh" / "config.json").write_text(json.dumps({"current_context": "p", "contexts": 5}))
    result = run_cli("token", env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert result.code == 3, result.err
    assert "contexts" in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_config_others_can_write_is_refused(home, mode):
    """It says where the secret goes (auth_base_url): only its owner may be able to change it."""
    path = home / ".qsh" / "config.json"
    path.chmod(mode)
    with pytest.raises(ConfigurationError, match=f"{re.escape(str(path))} is writable by group or others") as caught:
        Settings.from_env(_env(home))
    assert "chmod go-w" in str(caught.value)


def test_a_config_readable_by_others_without_a_literal_secret_is_fine(home):
    (home / ".qsh" / "config.json").chmod(0o644)
    assert Settings.from_env(_env(home)).client_id == "m2m-client"


def test_a_config_in_a_directory_others_can_write_is_refused(home):
    (home / ".qsh").chmod(0o777)
    try:
        with pytest.raises(ConfigurationError, match="which other users can write to"):
            Settings.from_env(_env(home))
    finally:
        (home / ".qsh").chmod(0o700)


# --- what a context says for the tasks plugin, as QuEra's tools read it ---------------------------

GROUP = "5b0e1c3a-8a47-4f33-9d55-2a7c1f0e9b61"


def _validated(config: dict) -> dict:
    """The config, checked first by QuEra's own config model: what we read is what their tools accept."""
    from qlam_core.config.config_models import QshClientConfig

    QshClientConfig.model_validate(config)
    return config


def _write(home, config: dict) -> None:
    (home / ".qsh" / "config.json").write_text(json.dumps(_validated(config)))


def _tasks_context(**plugin: object) -> dict:
    config = _config(production=[_provider("device", grant_type="device_code", client_secret=None), _provider("m2m")])
    context = config["contexts"][0]
    context["defaults"] = {
        "api_base_url": "https://defaults.api.example",
        "auth_provider": "device",
        "qpu_mode": "squin-64q",
        "http_client": {"request_timeout_seconds": 42.5, "verify_ssl": "~/site-ca.pem"},
    }
    context["plugins"] = {"tasks": {"api_base_url": "https://tasks.api.example", "auth_provider": "m2m", **plugin}}
    return config


def test_plugins_tasks_overrides_the_defaults(home):
    """plugins.tasks wins over defaults (auth provider, API, qpu_mode, group); http_client gives
    the timeout and the CA bundle, for the token fetch and the API alike."""
    from qlam_hpc import ApiSettings

    _write(home, _tasks_context(qpu_mode="squin-256q", group=GROUP))
    settings = Settings.from_env(_env(home))
    assert settings.client_id == "m2m-client" and not settings.user_context  # the tasks plugin's provider
    assert settings.http_timeout == 42.5
    assert settings.tls_trust == (
        f"http_client.verify_ssl of QLAM Shell context 'production' in {home / '.qsh' / 'config.json'}",
        os.path.expanduser("~/site-ca.pem"),
    )
    api = ApiSettings.from_env(_env(home))
    assert (api.base_url, api.qpu_mode, api.group, api.timeout) == (
        "https://tasks.api.example",
        "squin-256q",
        GROUP,
        42.5,
    )


def test_the_environment_wins_over_the_context(home):
    from qlam_hpc import ApiSettings

    _write(home, _tasks_context(group=GROUP))
    env = _env(home, QLAM_API_URL="https://env.api.example", QLAM_QPU_MODE="squin-8q", QLAM_CONTEXT="production")
    api = ApiSettings.from_env({**env, "QLAM_GROUP": "11111111-2222-3333-4444-555555555555", "QLAM_API_TIMEOUT": "7"})
    assert (api.base_url, api.qpu_mode, api.group, api.timeout) == (
        "https://env.api.example",
        "squin-8q",
        "11111111-2222-3333-4444-555555555555",
        7.0,
    )


def test_verify_ssl_false_is_refused(home):
    """Certificate checks are never turned off: the message says to give the CA bundle instead."""
    config = _tasks_context()
    config["contexts"][0]["defaults"]["http_client"]["verify_ssl"] = False
    _write(home, config)
    with pytest.raises(ConfigurationError, match="turns certificate checks off"):
        Settings.from_env(_env(home))


@pytest.mark.parametrize(
    ("provider", "kind"),
    [
        ({"name": "legacy", "provider": "token", "token": "env:OLD_TOKEN"}, "a static-token provider"),
        (
            {"name": "legacy", "provider": "basic", "username": "ada", "password": "env:PW"},
            "a username/password provider",
        ),
    ],
)
def test_a_context_whose_provider_is_token_or_basic_says_what_it_needs(home, provider, kind):
    config = _config(production=[provider])
    _write(home, config)
    result = run_cli("token", env={**_env(home), "PATH": os.environ["PATH"]})
    assert result.code == 3
    assert "the auth provider 'legacy' that context 'production'" in result.err and kind in result.err
    assert "client_credentials (M2M), device_code (a user login) or token_exchange" in result.err


def test_the_default_group_goes_into_created_tasks(home, sandbox, tmp_path):
    """A context's group (a UUID) is the group_id of tasks that name none; a group name is refused."""
    from qlam_hpc import ApiSettings, QlamClient

    config = _config(production=[_provider("m2m")])
    config["contexts"][0]["plugins"] = {"tasks": {"api_base_url": sandbox.url, "group": GROUP}}
    _write(home, config)
    env = {**_env(home), **sandbox.env(), "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "cache")}
    del env["QLAM_API_URL"]
    api = ApiSettings.from_env(env)
    definition = {"programs": [{"content": "x"}], "subtasks": [{"program_index": 0, "num_shots": 1}]}
    with QlamClient(api, provider=TokenProvider(Settings.from_env(env))) as client:
        assert client.create_task(definition).group.id == GROUP
    config["contexts"][0]["plugins"]["tasks"]["group"] = "physics"
    _write(home, config)
    (tmp_path / "job.json").write_text(json.dumps(definition))
    result = run_cli("tasks", "submit", str(tmp_path / "job.json"), env={**env, "PATH": os.environ["PATH"]})
    assert result.code == 3 and "is not a UUID" in result.err


# --- token exchange (grant_type token_exchange) ------------------------------------------------


def _exchanger(sandbox, name: str = "ci", **fields) -> dict:
    """A token_exchange provider for the exchange sandbox's client (its secret by env: reference),
    with a subject token type the sandbox takes."""
    return _provider(
        name,
        grant_type="token_exchange",
        auth_base_url=sandbox.url,
        client_id=CLIENT.client_id,
        audience=sandbox.audience,
        subject_token_type=sandbox.env(flow="token-exchange")["QLAM_SUBJECT_TOKEN_TYPE"],
        **fields,
    )


@pytest.fixture
def job_env(idp, cache_dir, tmp_path) -> dict[str, str]:
    """A job's environment that names no client: the QLAM Shell config (QSH_CONFIG) does, and the
    client secret is in the variable the config references."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QLAM_", "AUTH_", "SLURM_", "PBS_", "ACTIONS_"))}
    clean.pop("GITLAB_CI", None)
    return {
        **clean,
        "QLAM_CLIENT_SECRET": CLIENT.client_secret,
        "QLAM_TOKEN_CACHE_DIR": str(cache_dir),
        "QSH_CONFIG": str(tmp_path / "config.json"),
    }


def _write_config(env: dict[str, str], config: dict) -> None:
    path = Path(env["QSH_CONFIG"])
    path.write_text(json.dumps(config))
    path.chmod(0o600)


def test_a_token_exchange_context_exchanges_its_subject_token_file(issuer, idp, job_env, subject_file):
    """The context's default provider is its token_exchange one (an M2M one beside it is not taken):
    `qlam-hpc token` exchanges the file's subject token, and status and doctor name the flow."""
    token_file = subject_file("sa", "system:serviceaccount:lab:runner")
    m2m = _provider("m2m", auth_base_url=idp.url, client_id=CLIENT.client_id, audience=idp.audience)
    _write_config(job_env, _config(production=[_exchanger(idp, subject_token_file=str(token_file)), m2m]))
    run = run_cli("token", env=job_env)
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|system:serviceaccount:lab:runner"
    assert idp.stats()["token_exchanges"] == 1
    status = run_cli("auth", "status", env=job_env)
    assert status.code == 0, status.err
    assert "flow        token exchange (RFC 8693)" in status.out
    doctor = run_cli("doctor", env=job_env)
    assert "token exchange (RFC 8693), from grant_type token_exchange of QLAM Shell context 'production'" in doctor.out


def test_the_environments_subject_token_file_wins_over_the_contexts(issuer, idp, job_env, subject_file):
    file_token = subject_file("file", "named-by-the-file")
    env_token = subject_file("env", "named-by-the-environment")
    _write_config(job_env, _config(production=[_exchanger(idp, subject_token_file=str(file_token))]))
    run = run_cli("token", env={**job_env, "QLAM_SUBJECT_TOKEN_FILE": str(env_token)})
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|named-by-the-environment"


@pytest.mark.parametrize("form", ["list", "string"])
def test_a_contexts_subject_token_command_is_run_word_for_word_without_a_shell(
    issuer, idp, job_env, site_command, form
):
    command = site_command if form == "list" else shlex.join(site_command)
    _write_config(job_env, _config(production=[_exchanger(idp, subject_token_command=command)]))
    run = run_cli("token", env=job_env)
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|site:batch"


def test_quera_s_subject_token_variable_is_read_and_named_when_unset(issuer, idp, job_env, subject_file):
    """A context QuEra's own tools accept (subject_token: env:NAME) works as it is; without the
    variable, the one-line error names the file's key, not a QLAM_* variable nobody set."""
    _write_config(job_env, _validated(_config(production=[_exchanger(idp, subject_token="env:CI_JOB_JWT")])))
    token = subject_file("ci", "project_path:lab/jobs").read_text().strip()
    run = run_cli("token", env={**job_env, "CI_JOB_JWT": token})
    assert run.code == 0, run.err
    assert subject_of(run.out.strip()) == f"exchange|{issuer.url}|project_path:lab/jobs"
    unset = run_cli("token", env={k: v for k, v in job_env.items() if k != "CI_JOB_JWT"})
    assert unset.code == 19 and len(unset.err.strip().splitlines()) == 1
    assert "subject_token env:CI_JOB_JWT (QLAM Shell config)" in unset.err
    assert "GitLab" not in unset.err  # a hint for GitLab CI only where it runs


def test_which_provider_a_context_with_a_token_exchange_provider_selects(home):
    """M2M stays first when the default names no provider; a default naming the token_exchange
    provider, or QLAM_AUTH_FLOW=token-exchange, selects it, with its source and type."""
    exchanger = _provider(
        "ci", grant_type="token_exchange", subject_token="env:CI_JOB_JWT", subject_token_type="urn:x:ci"
    )
    unnamed = _config(production=[exchanger, _provider("m2m")])
    del unnamed["contexts"][0]["defaults"]["auth_provider"]
    _write(home, unnamed)
    assert Settings.from_env(_env(home)).auth_flow == "client_credentials"
    _write(home, _config(production=[exchanger, _provider("m2m")]))
    named = Settings.from_env(_env(home))
    assert (named.auth_flow, named.client_id) == ("token-exchange", "ci-client")
    assert (named.subject_source.kind, named.subject_source.where) == ("variable", "CI_JOB_JWT")
    assert named.subject_token_type == "urn:x:ci"
    assert isinstance(named.client_secret, EnvSecret)  # the client authenticates as an M2M client does
    _write(home, _config(production=[_provider("m2m"), exchanger]))
    assert Settings.from_env(_env(home)).client_id == "m2m-client"
    asked = Settings.from_env(_env(home, QLAM_AUTH_FLOW="token-exchange", QLAM_SUBJECT_TOKEN_TYPE="urn:x:env"))
    assert (asked.client_id, asked.subject_token_type) == ("ci-client", "urn:x:env")
    _write(home, _config(production=[_provider("m2m")]))
    with pytest.raises(ConfigurationError, match="has no auth provider with grant_type token_exchange"):
        Settings.from_env(_env(home, QLAM_AUTH_FLOW="token-exchange"))


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"subject_token_command": 5}, "subject_token_command"),
        ({"subject_token_command": ["site-token", 5]}, "subject_token_command"),
        ({"subject_token_command": "site-token 'unclosed"}, "subject_token_command"),
        ({"subject_token_file": ["/run/token"]}, "subject_token_file"),
        ({"subject_token_type": 5}, "subject_token_type"),
        ({"subject_token_type": "not a uri"}, "subject_token_type"),
        ({"actor_token_file": {"path": "/run/actor"}}, "actor_token_file"),
        ({"subject_token": "eyJ-a-pasted-token-never-shown"}, "subject_token"),
        ({"subject_token": "env:eyJhbGciOiJSUzI1NiJ9.never-shown.sig"}, "subject_token"),
        ({"subject_token_file": "/run/token", "subject_token_command": "site-token"}, "subject_token_command"),
    ],
)
def test_a_malformed_token_exchange_provider_names_the_file_and_key(home, fields, key):
    path = home / ".qsh" / "config.json"
    path.write_text(json.dumps(_config(production=[_provider("ci", grant_type="token_exchange", **fields)])))
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(_env(home))
    message = str(caught.value)
    assert str(path) in message and key in message and "\n" not in message, message
    assert "never-shown" not in message


def test_a_token_exchange_context_without_a_source_says_where_to_name_one(home):
    """The flow came from the file, so the error names the file's keys and the variables, not a
    QLAM_AUTH_FLOW nobody set."""
    path = home / ".qsh" / "config.json"
    path.write_text(json.dumps(_config(production=[_provider("ci", grant_type="token_exchange")])))
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(_env(home))
    message = str(caught.value)
    assert message.startswith("token exchange (QLAM Shell context 'production' in "), message
    assert str(path) in message and "subject_token_file" in message and "QLAM_SUBJECT_TOKEN_FILE" in message
    assert "QLAM_AUTH_FLOW" not in message


def test_a_wrong_type_in_a_token_exchange_provider_is_one_line_from_the_cli(home):
    _write_config(
        {"QSH_CONFIG": str(home / ".qsh" / "config.json")},
        _config(production=[_provider("ci", grant_type="token_exchange", subject_token_command=5)]),
    )
    result = run_cli("token", env={"HOME": str(home), "PATH": os.environ["PATH"]})
    assert result.code == 3, result.err
    assert result.err.strip().splitlines() == [result.err.strip()]
    assert "subject_token_command of auth provider 'ci'" in result.err and "config.json" in result.err
