"""Settings from the environment: Settings.from_env, token URLs, the cache switches, Secret."""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from qlam_hpc._errors import ConfigurationError
from qlam_hpc._settings import DEFAULT_AUDIENCE, RetryPolicy, Secret, Settings, default_cache_dir, token_url_for

SECRET = "s3cr3t-Value-Never-Shown"
BASE = {
    "QLAM_CLIENT_ID": "client-1",
    "AUTH_BASE_URL": "quera-identity.us.auth0.com",
    "QLAM_CLIENT_SECRET": SECRET,
    "HOME": "/home/alice",
}


def _from_env(**variables) -> Settings:
    env = {**BASE, **variables}
    return Settings.from_env({k: v for k, v in env.items() if v is not None})


def _config_error(**variables) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        _from_env(**variables)
    assert caught.value.exit_code == 3
    return caught.value


# --- required variables ---------------------------------------------------------------------


def test_minimal_environment():
    """Client id, base URL and secret are enough; the rest has defaults."""
    settings = _from_env()
    assert settings.client_id == "client-1"
    assert settings.audience == DEFAULT_AUDIENCE == "https://api.quera.com"
    assert settings.token_url == "https://quera-identity.us.auth0.com/oauth/token"
    assert settings.client_secret.reveal() == SECRET
    assert settings.scope is None
    assert settings.cache_enabled is True
    assert settings.token_budget is None
    assert settings.lock_timeout == 240
    assert settings.http_timeout == 10


@pytest.mark.parametrize("variable", ["QLAM_CLIENT_ID", "AUTH_BASE_URL"])
@pytest.mark.parametrize("value", [None, ""])
def test_required_variable_is_named(variable, value):
    """A missing or empty required variable is a ConfigurationError (exit 3) naming it."""
    assert variable in str(_config_error(**{variable: value}))


def test_secret_is_optional():
    """Without QLAM_CLIENT_SECRET, settings load (a cached token may still be used)."""
    assert _from_env(QLAM_CLIENT_SECRET=None).client_secret is None
    assert _from_env(QLAM_CLIENT_SECRET="").client_secret is None


def test_optional_variables_are_read():
    """Audience, scope and HTTP timeout come from their QLAM_ variables."""
    settings = _from_env(QLAM_AUDIENCE="https://api.example", QLAM_SCOPE="read:tasks", QLAM_HTTP_TIMEOUT="30s")
    assert (settings.audience, settings.scope, settings.http_timeout) == ("https://api.example", "read:tasks", 30)


def test_empty_optional_variables_mean_unset():
    """An exported-but-empty audience or scope falls back to the default."""
    settings = _from_env(QLAM_AUDIENCE="", QLAM_SCOPE="")
    assert (settings.audience, settings.scope) == (DEFAULT_AUDIENCE, None)


# --- the token URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("quera-identity.us.auth0.com", "https://quera-identity.us.auth0.com/oauth/token"),
        ("  quera-identity.us.auth0.com/  ", "https://quera-identity.us.auth0.com/oauth/token"),
        ("idp.example:8443", "https://idp.example:8443/oauth/token"),
        ("https://idp.example", "https://idp.example/oauth/token"),
        ("https://idp.example/", "https://idp.example/oauth/token"),
        ("https://idp.example/tenant-a", "https://idp.example/tenant-a/oauth/token"),
        ("HTTPS://idp.example", "https://idp.example/oauth/token"),
        ("Https://idp.example/tenant-a/", "https://idp.example/tenant-a/oauth/token"),
    ],
)
def test_token_url(base, url):
    """A bare host means https; a full https URL is kept; /oauth/token is appended once."""
    assert token_url_for(base) == url
    assert _from_env(AUTH_BASE_URL=base).token_url == url


@pytest.mark.parametrize(
    "base",
    ["http://127.0.0.1:8080", "http://127.1.2.3", "http://localhost:5000/", "http://[::1]:8080", "http://localhost"],
)
def test_plain_http_on_loopback(base):
    """Plain http is allowed to the local sandbox on 127.x, localhost and ::1."""
    assert token_url_for(base) == base.rstrip("/") + "/oauth/token"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("HTTP://127.0.0.1:8080", "http://127.0.0.1:8080/oauth/token"),
        ("http://LOCALHOST:5000", "http://LOCALHOST:5000/oauth/token"),
    ],
)
def test_scheme_and_loopback_name_are_case_insensitive(base, url):
    """HTTP:// and LOCALHOST are the same scheme and host as their lower-case spellings."""
    assert token_url_for(base) == url


@pytest.mark.parametrize(
    "base",
    [
        "http://idp.example",
        "HTTP://idp.example",
        "http://10.0.0.5:8080",
        "http://localhost.idp.example",
        "http://127.0.0.1@idp.example",
        "http://127.attacker.example",
        "http://127.0.0.1.attacker.example",
        "http://127.0.0.256",
    ],
)
def test_plain_http_elsewhere_is_refused(base):
    """Plain http to any non-loopback host is refused: the secret would travel in clear text."""
    with pytest.raises(ConfigurationError, match="https is required") as caught:
        token_url_for(base)
    assert caught.value.exit_code == 3


@pytest.mark.parametrize(
    "base",
    ["ftp://idp.example", "file:///etc/passwd", "https:///tenant", "https://:443", "https://", "http://", "HTTPS://"],
)
def test_non_http_urls_are_refused(base):
    """Other schemes and URLs without a host are refused, quoting the value."""
    with pytest.raises(ConfigurationError, match="not a host name or an http") as caught:
        token_url_for(base)
    assert repr(base) in str(caught.value)


@pytest.mark.parametrize("base", ["https://", "http://"])
def test_scheme_without_host_is_refused(base):
    """``AUTH_BASE_URL=https://$HOST`` with an empty $HOST is a configuration error (exit 3), not host 'https'."""
    error = _config_error(AUTH_BASE_URL=base)
    assert "not a host name or an http" in str(error)


def test_dns_name_starting_with_127_is_not_loopback():
    """A DNS name such as 127.attacker.example is not loopback, so plain http to it is refused."""
    with pytest.raises(ConfigurationError, match="https is required"):
        token_url_for("http://127.attacker.example")


@pytest.mark.parametrize(
    "base",
    [
        "http://idp.example#@127.0.0.1",
        "http://idp.example?@localhost:80",
        "http://idp.example/path?x=@[::1]",
        "https://idp.example/tenant?x=1",
        "https://idp.example#frag",
        "idp.example?x",
    ],
)
def test_query_or_fragment_is_refused(base):
    """``http://host#@127.0.0.1`` is sent to ``host`` by any HTTP client, so '?' and '#' are refused outright."""
    with pytest.raises(ConfigurationError, match="not a host name or an http") as caught:
        token_url_for(base)
    assert caught.value.exit_code == 3


# --- overrides ------------------------------------------------------------------------------


def test_overrides_win_over_environment():
    """CLI-style keyword overrides beat the environment."""
    env = {**BASE, "QLAM_AUDIENCE": "https://env.example", "QLAM_SCOPE": "env:scope", "QLAM_TOKEN_CACHE_DIR": "/env"}
    settings = Settings.from_env(
        env,
        client_id="cli-client",
        audience="https://cli.example",
        auth_base_url="https://cli-idp.example",
        scope="cli:scope",
        cache_dir="/cli/cache",
        lock_timeout=5.0,
    )
    assert settings.client_id == "cli-client"
    assert settings.audience == "https://cli.example"
    assert settings.token_url == "https://cli-idp.example/oauth/token"
    assert settings.scope == "cli:scope"
    assert settings.cache_dir == "/cli/cache"
    assert settings.lock_timeout == 5.0


def test_overrides_supply_required_values():
    """A required value given as an override need not be in the environment."""
    settings = Settings.from_env({"HOME": "/home/alice"}, client_id="c", auth_base_url="idp.example")
    assert (settings.client_id, settings.token_url) == ("c", "https://idp.example/oauth/token")


def test_none_overrides_are_ignored():
    """An option the user did not give (None) leaves the environment's value in place."""
    env = {**BASE, "QLAM_SCOPE": "env:scope", "QLAM_TOKEN_CACHE_DIR": "/env/cache"}
    settings = Settings.from_env(
        env, client_id=None, audience=None, auth_base_url=None, scope=None, cache_dir=None, lock_timeout=None
    )
    assert settings == Settings.from_env(env)
    assert settings.client_id == "client-1"
    assert settings.scope == "env:scope"
    assert settings.lock_timeout == 240


def test_environment_is_read_only_from_the_mapping_given(monkeypatch):
    """Given an explicit mapping, from_env ignores os.environ."""
    monkeypatch.setenv("QLAM_SCOPE", "from-os-environ")
    monkeypatch.setenv("XDG_CACHE_HOME", "/os/xdg")
    settings = _from_env()
    assert settings.scope is None
    assert settings.cache_dir == "/home/alice/.cache/qlam-hpc"


# --- the cache directory and switches -------------------------------------------------------


def test_default_cache_dir_under_home():
    """Without XDG_CACHE_HOME the cache is ~/.cache/qlam-hpc, as a str."""
    assert _from_env(HOME="/home/bob").cache_dir == "/home/bob/.cache/qlam-hpc"
    assert default_cache_dir({"HOME": "/home/bob"}) == "/home/bob/.cache/qlam-hpc"


def test_default_cache_dir_honours_xdg():
    """An absolute XDG_CACHE_HOME holds the cache."""
    assert _from_env(XDG_CACHE_HOME="/scratch/xdg").cache_dir == "/scratch/xdg/qlam-hpc"
    assert default_cache_dir({"XDG_CACHE_HOME": "/scratch/xdg", "HOME": "/h"}) == "/scratch/xdg/qlam-hpc"


def test_relative_xdg_cache_home_is_ignored():
    """A relative XDG_CACHE_HOME is invalid per the XDG spec and falls back to HOME."""
    assert _from_env(XDG_CACHE_HOME="rel/cache").cache_dir == "/home/alice/.cache/qlam-hpc"


def test_default_cache_dir_without_home_uses_the_user_home(monkeypatch):
    """With HOME unset in the mapping given, the user's home directory is used."""
    monkeypatch.setenv("HOME", "/os/home")
    assert default_cache_dir({}) == "/os/home/.cache/qlam-hpc"


def test_cache_dir_is_always_a_string():
    """from_env always fills cache_dir with a str, whichever source it came from."""
    for settings in (_from_env(), _from_env(QLAM_TOKEN_CACHE_DIR="/shared/cache"), _from_env(XDG_CACHE_HOME="/x")):
        assert type(settings.cache_dir) is str
        assert settings.cache_path == settings.cache_dir


def test_cache_dir_variable_wins_and_expands_user(monkeypatch):
    """QLAM_TOKEN_CACHE_DIR beats XDG and HOME, and ``~`` in it is expanded."""
    monkeypatch.setenv("HOME", "/os/home")
    assert _from_env(QLAM_TOKEN_CACHE_DIR="/shared/cache", XDG_CACHE_HOME="/x").cache_dir == "/shared/cache"
    assert _from_env(QLAM_TOKEN_CACHE_DIR="~/tok").cache_dir == os.path.expanduser("~/tok") == "/os/home/tok"


def test_cache_dir_override_may_be_a_path_like(tmp_path):
    """A PathLike cache_dir override (from Python callers) becomes a str."""
    assert Settings.from_env(BASE, cache_dir=tmp_path / "c").cache_dir == str(tmp_path / "c")


def test_cache_path_falls_back_to_the_default(monkeypatch):
    """Settings built without a cache_dir use the per-user default of the process environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", "/os/xdg")
    settings = Settings("client-1", DEFAULT_AUDIENCE, "https://idp.example/oauth/token")
    assert settings.cache_dir is None
    assert settings.cache_path == "/os/xdg/qlam-hpc"
    assert settings.with_(cache_dir="/mine").cache_path == "/mine"


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("on", True),
        ("ON", True),
        ("1", True),
        ("true", True),
        ("yes", True),
        ("", True),
        ("off", False),
        ("Off", False),
        ("0", False),
        ("false", False),
        ("no", False),
        (" off ", False),
    ],
)
def test_cache_switch(value, enabled):
    """QLAM_TOKEN_CACHE turns the shared cache on or off."""
    assert _from_env(QLAM_TOKEN_CACHE=value).cache_enabled is enabled


def test_cache_switch_unset_means_on():
    """Without QLAM_TOKEN_CACHE the shared cache is on."""
    assert _from_env(QLAM_TOKEN_CACHE=None).cache_enabled is True


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "of"])
def test_cache_switch_garbage(value):
    """An unrecognised QLAM_TOKEN_CACHE is an error naming the variable, not a silent default."""
    assert "QLAM_TOKEN_CACHE" in str(_config_error(QLAM_TOKEN_CACHE=value))


@pytest.mark.parametrize(("value", "budget"), [("1000", 1000), ("1", 1), (" 50 ", 50), ("", None)])
def test_token_budget(value, budget):
    """QLAM_TOKEN_BUDGET is a positive whole number; empty means no budget."""
    assert _from_env(QLAM_TOKEN_BUDGET=value).token_budget == budget


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "1e3"])
def test_token_budget_invalid(value):
    """Zero, negative, fractional or non-numeric budgets are refused, naming the variable."""
    message = str(_config_error(QLAM_TOKEN_BUDGET=value))
    assert "QLAM_TOKEN_BUDGET" in message
    assert repr(value) in message


@pytest.mark.parametrize(("value", "seconds"), [("30", 30), ("2m", 120), ("1h30m", 5400), ("", 240)])
def test_lock_timeout_durations(value, seconds):
    """QLAM_LOCK_TIMEOUT takes durations like 2m; empty keeps the 240 s default."""
    assert _from_env(QLAM_LOCK_TIMEOUT=value).lock_timeout == seconds


@pytest.mark.parametrize("value", ["soon", "-5", "inf", "5 minutes", "0", "0s"])
def test_lock_timeout_invalid(value):
    """A bad QLAM_LOCK_TIMEOUT is a ConfigurationError naming the variable."""
    assert str(_config_error(QLAM_LOCK_TIMEOUT=value)).startswith("QLAM_LOCK_TIMEOUT:")


# --- secrets never shown --------------------------------------------------------------------


def test_secret_never_shows_itself():
    """repr, str and f-strings of a Secret are masked; reveal() gives the value."""
    secret = Secret(SECRET)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", repr([secret]), "%s" % secret):  # noqa: UP031 - %-formatting is one of the ways shown
        assert SECRET not in shown
        assert "****" in shown
    assert secret.reveal() == SECRET


def test_secret_equality():
    """Secrets compare by value, so settings with the same secret are equal."""
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))


def test_secret_refuses_pickling():
    """A Secret cannot be pickled or copied into another process or a log queue."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(Secret(SECRET), protocol=protocol)
    with pytest.raises(TypeError):
        copy.deepcopy(Secret(SECRET))


def test_settings_with_secret_refuse_pickling():
    """Settings holding a secret do not pickle, so the secret cannot leak that way."""
    with pytest.raises(TypeError):
        pickle.dumps(_from_env())


def test_settings_repr_never_shows_the_secret():
    """repr and str of Settings leave the secret out."""
    settings = _from_env()
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert SECRET not in shown
    assert "client-1" in repr(settings)


def test_with_changes_a_copy():
    """with_() returns changed settings and leaves the original alone."""
    settings = _from_env()
    changed = settings.with_(lock_timeout=1.0)
    assert (settings.lock_timeout, changed.lock_timeout) == (240, 1.0)
    assert type(changed) is Settings
    assert changed.with_(lock_timeout=240.0) == settings


def test_with_refuses_unknown_fields():
    """A misspelt setting in with_() is an error, not silently ignored."""
    with pytest.raises((TypeError, ValueError)):
        _from_env().with_(lock_timout=1.0)


def test_settings_are_immutable():
    """Settings and RetryPolicy fields cannot be reassigned, and no attributes can be added."""
    settings = _from_env()
    with pytest.raises(AttributeError):
        settings.lock_timeout = 1.0
    with pytest.raises(AttributeError):
        settings.extra = 1
    with pytest.raises(AttributeError):
        settings.retry.attempts = 1


def test_retry_policy_defaults_and_environment():
    """The retry policy defaults to 5 attempts in 60 s, and QLAM_RETRY_* change attempts and deadline."""
    assert _from_env().retry == RetryPolicy(attempts=5, deadline=60.0, initial_delay=0.5, max_delay=10.0)
    retry = _from_env(QLAM_RETRY_ATTEMPTS="2", QLAM_RETRY_DEADLINE="5s").retry
    assert (retry.attempts, retry.deadline) == (2, 5.0)


# --- credentials, client authentication, other servers ------------------------------------------


def test_new_settings_default_to_auth0s_behaviour():
    """Without the new variables: client_secret_post by default, audience parameter, no discovery, no key."""
    settings = _from_env()
    assert settings.client_auth is None and settings.audience_param == "audience"
    assert settings.discovery_url is None and settings.private_key is None
    assert settings.key_id is None and settings.assertion_alg is None


def test_private_key_settings_are_read():
    """QLAM_CLIENT_PRIVATE_KEY_FILE, QLAM_CLIENT_KEY_ID and QLAM_CLIENT_ASSERTION_ALG are read
    without opening the file."""
    settings = _from_env(
        QLAM_CLIENT_PRIVATE_KEY_FILE="~/keys/qlam.pem", QLAM_CLIENT_KEY_ID="key-2026", QLAM_CLIENT_ASSERTION_ALG="PS256"
    )
    assert settings.private_key.describe() == "file " + os.path.expanduser("~/keys/qlam.pem")
    assert (settings.key_id, settings.assertion_alg) == ("key-2026", "PS256")


def test_a_literal_private_key_is_a_secret():
    """QLAM_CLIENT_PRIVATE_KEY holding PEM text is kept as a masked Secret."""
    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
    settings = _from_env(QLAM_CLIENT_PRIVATE_KEY=pem)
    assert isinstance(settings.private_key, Secret) and settings.private_key.reveal() == pem
    assert "MIIB" not in repr(settings)


def test_key_and_key_file_together_are_refused():
    """QLAM_CLIENT_PRIVATE_KEY and QLAM_CLIENT_PRIVATE_KEY_FILE together are ambiguous: refused."""
    assert "both QLAM_CLIENT_PRIVATE_KEY and QLAM_CLIENT_PRIVATE_KEY_FILE" in str(
        _config_error(QLAM_CLIENT_PRIVATE_KEY="x", QLAM_CLIENT_PRIVATE_KEY_FILE="/k")
    )


def test_context_override_is_not_a_settings_field(tmp_path):
    """--context is consumed by from_env (a QLAM Shell context), not copied into Settings."""
    with pytest.raises(ConfigurationError, match="no QLAM Shell config"):
        Settings.from_env({**BASE, "HOME": str(tmp_path)}, context="production")


def test_settings_with_a_secret_source_refuse_pickling():
    """A secret *reference* does not pickle either (it may hold the environment)."""
    with pytest.raises(TypeError):
        pickle.dumps(_from_env(QLAM_CLIENT_SECRET=None, QLAM_CLIENT_SECRET_FILE="/run/secrets/qlam"))


def test_a_secret_argument_takes_the_same_notation():
    """from_env(client_secret=...) accepts a value or a reference, as the variable does."""
    settings = Settings.from_env(BASE, client_secret="file:/run/secrets/qlam", private_key="literal-pem")
    assert settings.client_secret.describe() == "file /run/secrets/qlam"
    assert settings.private_key == Secret("literal-pem")


def test_the_default_lock_timeout_outlasts_an_nfs4_lease_and_grace():
    """A crashed node's lock comes free on NFSv4 after the lease (90 s on Linux) and, after a
    server restart, its grace period (90 s more): waiters must still be waiting then, and
    longer than the longest fetch (retry deadline plus one request)."""
    settings = _from_env()
    assert settings.lock_timeout > 90 + 90
    assert settings.lock_timeout > settings.retry.deadline + settings.http_timeout


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2-password@redis.example.org:6379/0",
        "rediss://qlam:hunter2-password@redis.example.org:6380/0?ssl_ca_certs=/etc/ca.pem",
        "redis://redis.example.org/0?password=hunter2-password",
    ],
)
def test_the_repr_shows_the_store_url_without_its_password(url):
    settings = _from_env(QLAM_TOKEN_STORE=url)
    assert settings.token_store == url  # the value itself is intact, for the store
    shown = repr(settings)
    assert "hunter2-password" not in shown
    assert "redis.example.org" in shown and "********" in shown
    assert "hunter2-password" not in str(settings) and "hunter2-password" not in f"{settings!r}"


def test_the_ca_bundle_is_read_from_the_given_environment():
    assert _from_env().tls_trust is None
    assert _from_env(REQUESTS_CA_BUNDLE="/etc/site-ca.pem").tls_trust == ("REQUESTS_CA_BUNDLE", "/etc/site-ca.pem")
    both = _from_env(REQUESTS_CA_BUNDLE="/b.pem", SSL_CERT_DIR="/certs", SSL_CERT_FILE="/a.pem")
    assert both.tls_trust == ("SSL_CERT_FILE", "/a.pem")


@pytest.mark.parametrize(
    "url",
    [
        "https://\x80.example",
        "https://idp.exam ple",
        "https://" + "a" * 64 + ".example",
        "https://idp.example:99999",
        "https://\U00018d80",
    ],
)
def test_a_url_no_request_can_be_sent_to_is_a_configuration_error(url):
    """Found by fuzzing: these passed as settings and crashed the first request (httpx.InvalidURL)."""
    assert "is not a usable URL" in str(_config_error(AUTH_BASE_URL=url))
