"""Property-based fuzzing of every parser of outside input.

Each parser gets arbitrary input, and structured input close to what it expects (the
right keys with values of any JSON type). Nothing but a documented ``QlamError`` may
escape (``ValueError`` for the pure decode functions that document it), and no input
may take long: each example has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import string
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlam_hpc._cache import MAGIC, Identity, decode_entry
from qlam_hpc._discovery import parse_discovery
from qlam_hpc._durations import parse_duration
from qlam_hpc._errors import ConfigurationError, QlamError
from qlam_hpc._oauth import parse_device_authorization, parse_token_response, parse_user_tokens
from qlam_hpc._qsh import select_client
from qlam_hpc._settings import Settings
from qlam_hpc._tokens import unverified_claims

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
)
URL = "https://idp.example/oauth/token"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def _objects_with(keys: list[str]):
    """JSON objects whose keys are mostly the ones a parser reads, with values of any type."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), json_values, max_size=len(keys) + 2)


def _bodies(keys: list[str]):
    structured = _objects_with(keys).map(lambda d: json.dumps(d, allow_nan=True).encode())
    return structured | st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())


statuses = st.sampled_from([200, 201, 204, 400, 401, 403, 404, 429, 500, 503]) | st.integers(100, 599)
headers = st.fixed_dictionaries(
    {}, optional={"content-type": st.sampled_from(["application/json", "text/html", "", "application/json; charset=x"])}
)

TOKEN_KEYS = [
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "error",
    "error_description",
    "refresh_token",
    "id_token",
    "refresh_token_expires_in",
]


# --- token answers ----------------------------------------------------------------------------


@FUZZ
@given(statuses, headers, _bodies(TOKEN_KEYS), st.floats(0, 4e9))
def test_parse_token_response(status, head, body, at):
    with contextlib.suppress(QlamError):
        parse_token_response(status, head, body, URL, at, "node:1")


@FUZZ
@given(statuses, headers, _bodies(TOKEN_KEYS), st.floats(0, 4e9))
def test_parse_user_tokens(status, head, body, at):
    with contextlib.suppress(QlamError):
        parse_user_tokens(status, head, body, URL, at, "node:1")


DEVICE_KEYS = [
    "device_code",
    "user_code",
    "verification_uri",
    "verification_uri_complete",
    "expires_in",
    "interval",
    "error",
]


@FUZZ
@given(statuses, headers, _bodies(DEVICE_KEYS))
def test_parse_device_authorization(status, head, body):
    with contextlib.suppress(QlamError):
        parse_device_authorization(status, head, body, URL)


# --- JWT claims -------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


jwt_like = st.tuples(st.text(max_size=10), _bodies(["sub", "exp", "iat", "scope", "email"]), st.text(max_size=10)).map(
    lambda t: f"{t[0]}.{_b64(t[1])}.{t[2]}"
)


@FUZZ
@given(st.text(max_size=200) | jwt_like)
def test_unverified_claims(token):
    claims = unverified_claims(token)
    assert claims is None or isinstance(claims, dict)


# --- cache entries ----------------------------------------------------------------------------

IDENTITY = Identity.of(Settings.from_env({"QLAM_CLIENT_ID": "c", "AUTH_BASE_URL": "idp.example"}))
ENTRY_FIELDS = [
    "token_url",
    "client_id",
    "audience",
    "scope",
    "principal",
    "access_token",
    "token_type",
    "expires_at",
    "obtained_at",
    "token_scope",
    "obtained_by",
    "refresh_token",
    "login_at",
    "login_expires_at",
    "login_subject",
    "login_email",
    "failure",
    "failure_args",
    "failure_at",
    "failure_until",
    "failure_credentials",
    "failure_by",
    "intent_at",
    "intent_by",
]
field_values = st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=30) | st.sampled_from(
    ["", "nan", "inf", "-1", "1e400", "1700000000.0", "[]", "{}", '["x", 1]', "null", IDENTITY.token_url, "c"]
)


def _entry(lines: list[tuple[str, str]], end: bool) -> bytes:
    text = MAGIC + "\n" + "".join(f"{k}={v}\n" for k, v in lines)
    return (text + ("end\n" if end else "")).encode("utf-8", "surrogatepass")


entries = st.builds(
    _entry,
    st.lists(st.tuples(st.sampled_from(ENTRY_FIELDS) | st.text(max_size=6), field_values), max_size=14),
    st.booleans(),
)


@FUZZ
@given(entries | st.binary(max_size=300))
def test_decode_entry(raw):
    with contextlib.suppress(ValueError):
        decode_entry(raw, IDENTITY)


# --- settings and durations -------------------------------------------------------------------

VARIABLES = [
    "QLAM_CLIENT_ID",
    "AUTH_BASE_URL",
    "QLAM_TOKEN_URL",
    "QLAM_AUDIENCE",
    "QLAM_SCOPE",
    "QLAM_CLIENT_SECRET",
    "QLAM_CLIENT_SECRET_FILE",
    "QLAM_CLIENT_PRIVATE_KEY",
    "QLAM_TOKEN_CACHE",
    "QLAM_TOKEN_BUDGET",
    "QLAM_LOCK_TIMEOUT",
    "QLAM_HTTP_TIMEOUT",
    "QLAM_RETRY_ATTEMPTS",
    "QLAM_RETRY_DEADLINE",
    "QLAM_TOKEN_STORE",
    "QLAM_CLIENT_AUTH_METHOD",
    "QLAM_AUDIENCE_PARAM",
    "QLAM_DISCOVERY",
    "QLAM_CLIENT_ASSERTION_AUD",
    "QLAM_CLIENT_ASSERTION_ALG",
    "QLAM_AUTH_FLOW",
    "QLAM_DEVICE_AUTHORIZATION_URL",
    "QLAM_REVOCATION_URL",
    "QLAM_REFRESH_TOKEN_LIFETIME",
    "QLAM_CONTEXT",
    "QLAM_CLIENT_KEY_ID",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
]
durations = st.from_regex(r"\A\s*[0-9.]{0,6}[smhd]?([0-9.]{0,4}[smhd])?\s*\Z") | st.text(max_size=12)
urlish = st.builds(
    lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
    st.sampled_from(["", "https://", "http://", "HTTP://", "ftp://", "https:///"]),
    st.sampled_from(["idp.example", "127.0.0.1", "localhost", "[::1]", "127.evil.example", "a" * 64 + ".example", ""])
    | st.text(max_size=20),
    st.sampled_from(["", ":443", ":0", ":99999", ":x", ":"]),
    st.sampled_from(["", "/", "/oauth/token", "/?q", "#f", "/a b"]),
)
values = st.one_of(
    st.text(max_size=30),
    durations,
    urlish,
    st.sampled_from(["on", "off", "device", "m2m", "env:X", "vault://a/b#c", "aws-sm://x", "redis://:p@h/0"]),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(VARIABLES), values, max_size=10))
def test_settings_from_env(env):
    env = {"QSH_CONFIG": "/nonexistent/qsh-config.json", "HOME": "/nonexistent", **env}
    try:
        built = Settings.from_env(env)
    except QlamError:
        return
    # What was accepted must be usable: every URL is one httpx can send a request to.
    import httpx

    for url in (built.token_url, built.device_authorization_url, built.revocation_url, built.discovery_url):
        if url:
            httpx.Request("POST", url)
    repr(built)


@FUZZ
@given(durations | st.text(max_size=40))
def test_parse_duration(text):
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        assert str(error).startswith(("invalid duration", "empty duration")), error
    else:
        assert 0 <= seconds < float("inf")


# --- QLAM Shell config ------------------------------------------------------------------------

PROVIDER_KEYS = [
    "name",
    "provider",
    "grant_type",
    "auth_base_url",
    "client_id",
    "client_secret",
    "audience",
    "scope",
    "scopes",
    "tenant",
    "private_key",
    "key_id",
]
providers = _objects_with(PROVIDER_KEYS) | st.fixed_dictionaries(
    {
        "name": st.text(max_size=4) | json_values,
        "grant_type": st.sampled_from(["client_credentials", "device_code"]) | json_values,
    },
    optional={k: json_values | st.text(max_size=10) for k in PROVIDER_KEYS[3:]},
)
contexts = st.fixed_dictionaries(
    {"name": st.sampled_from(["p", "q"]) | json_values},
    optional={
        "auth_providers": st.lists(providers, max_size=3) | json_values,
        "defaults": st.fixed_dictionaries({}, optional={"auth_provider": json_values, "api_base_url": json_values})
        | json_values,
    },
)
configs = (
    st.fixed_dictionaries(
        {},
        optional={
            "current_context": st.sampled_from(["p", "q"]) | json_values,
            "contexts": st.lists(contexts, max_size=3) | json_values,
        },
    )
    | json_values
)


@FUZZ
@given(
    configs,
    st.sampled_from([None, "p", "q"]),
    st.sampled_from([None, "client_credentials", "device"]),
    st.sampled_from([0o600, 0o644]),
)
def test_select_client(data, context, flow, mode):
    try:
        client = select_client(data, "/home/u/.qsh/config.json", context, mode, flow)
        client.flow  # noqa: B018 - a property that must not fail on what select_client accepted
        client.credentials({"X": "v"})
    except ConfigurationError:
        pass


# --- discovery documents ----------------------------------------------------------------------

DISCOVERY_KEYS = [
    "issuer",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "device_authorization_endpoint",
    "revocation_endpoint",
]
discovery_bodies = _bodies(DISCOVERY_KEYS) | st.fixed_dictionaries(
    {"token_endpoint": urlish}, optional={k: urlish | json_values for k in DISCOVERY_KEYS if k != "token_endpoint"}
).map(lambda d: json.dumps(d).encode())


@FUZZ
@given(statuses, headers, discovery_bodies)
def test_parse_discovery(status, head, body):
    import httpx

    try:
        found = parse_discovery(status, head, body, "https://idp.example/.well-known/openid-configuration")
    except QlamError:
        return
    for url in (found.token_endpoint, found.device_authorization_endpoint, found.revocation_endpoint):
        if url:
            httpx.Request("POST", url)  # a discovered endpoint must be one a request can go to


# --- API error bodies -------------------------------------------------------------------------

API_KEYS = ["messages", "code", "message", "detail", "error_description", "error"]


@FUZZ
@given(st.integers(100, 599), _bodies(API_KEYS) | st.text(max_size=300).map(str.encode))
def test_api_error_bodies(status, body):
    import json

    from qlam_hpc._api._requests import ApiRequest, error_for, read_json
    from qlam_hpc._errors import ApiError, ApiUnreachable, InvalidTaskDefinition, NotFound

    url = "https://api.example/v2/x/tasks"
    request = ApiRequest("POST", "/v2/x/tasks")
    error = error_for(status, body, url, request)
    # The class follows the status alone, whatever the body.
    if status >= 500:
        assert type(error) is ApiUnreachable
    elif status == 404:
        assert type(error) is NotFound
    elif status == 400 and request.creates:
        assert type(error) is InvalidTaskDefinition
    else:
        assert type(error) is ApiError
    assert str(error).startswith(f"QLAM API {url} answered HTTP {status}: ")
    if not isinstance(error, ApiError):
        return
    assert error.status == status and error.url == url
    assert error.code is None or isinstance(error.code, int)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        messages = data.get("messages")
        if isinstance(messages, list) and messages:  # the API's own messages, every one, in order
            assert error.messages == tuple(str(m) for m in messages)
        if isinstance(data.get("code"), int):
            assert error.code == data["code"]
    elif data is None:
        # Text that is not JSON: at most one line of at most 200 characters, never the whole body.
        assert len(error.messages) <= 1
        assert all("\n" not in m and len(m) <= 200 for m in error.messages)
    with contextlib.suppress(QlamError):
        read_json(status, "application/json", body, "https://api.example/")


@FUZZ
@given(st.text(alphabet=string.printable, max_size=60))
def test_unverified_claims_of_printable_tokens(token):
    assert unverified_claims(token) is None or isinstance(unverified_claims(token), dict)
