"""Client authentication methods: what each adds to the token request, key loading, method choice."""

from __future__ import annotations

import base64
import re
import time
from urllib.parse import unquote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from qlam_hpc import ConfigurationError, _client_auth
from qlam_hpc._client_auth import (
    ASSERTION_LIFETIME,
    ASSERTION_TYPE,
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
    choose_method,
    client_authentication,
    load_private_key,
    resolve_credentials,
    uses_private_key,
)
from qlam_hpc._oauth import credentials_fingerprint, token_request
from qlam_hpc._settings import Secret, Settings

URL = "https://idp.example/oauth/token"
SECRET = "s3cr3t-Value-Never-Shown"
T0 = 1_700_000_000.0


def _pem(key, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def _settings(**fields) -> Settings:
    base = {
        "client_id": "client-1",
        "audience": "https://api.quera.com",
        "token_url": URL,
        "client_secret": Secret(SECRET),
    }
    return Settings(**{**base, **fields})


def _key_settings(key, **fields) -> Settings:
    return _settings(client_secret=None, private_key=Secret(_pem(key), "QLAM_CLIENT_PRIVATE_KEY_FILE"), **fields)


def _body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM: what must never appear in any message."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


# --- client_secret_post and client_secret_basic -------------------------------------------------


def test_post_puts_id_and_secret_in_the_body():
    """client_secret_post: client_id and client_secret are form fields; no Authorization header."""
    request = token_request(_settings(client_auth="client_secret_post"))
    assert request.form["client_id"] == "client-1" and request.form["client_secret"] == SECRET
    assert "Authorization" not in request.headers


def test_basic_puts_them_in_an_authorization_header():
    """client_secret_basic: an RFC 6749 Basic header, and neither the secret nor the id in the body."""
    request = token_request(_settings(client_auth="client_secret_basic"))
    scheme, _, credentials = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"client-1:{SECRET}"
    assert "client_secret" not in request.form and "client_id" not in request.form


def test_basic_form_urlencodes_id_and_secret_first():
    """RFC 6749 section 2.3.1: id and secret are form-urlencoded before base64, so ':' and spaces survive."""
    auth = ClientSecretBasic("id:with colon", Secret("p@ss word+"))
    headers: dict = {}
    auth.apply({}, headers, audience=URL, now=T0)
    raw_id, _, raw_secret = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
    assert (unquote_plus(raw_id), unquote_plus(raw_secret)) == ("id:with colon", "p@ss word+")


def test_method_objects_never_show_the_secret():
    """The repr of every method object hides the secret."""
    for auth in (ClientSecretPost("c", Secret(SECRET)), ClientSecretBasic("c", Secret(SECRET))):
        assert SECRET not in repr(auth)


def test_resource_parameter_instead_of_audience():
    """QLAM_AUDIENCE_PARAM=resource sends RFC 8707's resource, not Auth0's audience."""
    form = token_request(_settings(audience_param="resource")).form
    assert form["resource"] == "https://api.quera.com" and "audience" not in form
    assert token_request(_settings()).form["audience"] == "https://api.quera.com"


# --- private_key_jwt ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "alg", "expected"),
    [("rsa_key", None, "RS256"), ("rsa_key", "PS256", "PS256"), ("ec_key", None, "ES256")],
)
def test_assertion_claims_and_signature(request, key_name, alg, expected):
    """The assertion: iss = sub = client id, aud = the token endpoint, unique jti, 60 s, signed with the key."""
    key = request.getfixturevalue(key_name)
    form = token_request(_key_settings(key, assertion_alg=alg, key_id="key-1"), now=T0).form
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["client_id"] == "client-1" and "client_secret" not in form
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"]) == (expected, "key-1")
    claims = jwt.decode(
        assertion,
        key.public_key(),
        algorithms=[expected],
        audience=URL,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == URL
    assert (claims["iat"], claims["exp"]) == (int(T0), int(T0) + ASSERTION_LIFETIME)
    assert len(claims["jti"]) >= 20


def test_every_request_gets_a_new_jti(rsa_key):
    """Two requests (say, a retry) never carry the same assertion id."""
    settings = _key_settings(rsa_key)
    jtis = {
        jwt.decode(token_request(settings).form["client_assertion"], options={"verify_signature": False})["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


def test_no_kid_header_without_a_key_id(ec_key):
    """Without QLAM_CLIENT_KEY_ID the assertion carries no kid."""
    assertion = token_request(_key_settings(ec_key)).form["client_assertion"]
    assert "kid" not in jwt.get_unverified_header(assertion)


def test_assertion_audience_is_the_endpoint_actually_used(rsa_key):
    """With a discovered endpoint, aud names that endpoint, not the configured placeholder."""
    form = token_request(_key_settings(rsa_key), endpoint="https://other.example/token").form
    assert (
        jwt.decode(form["client_assertion"], options={"verify_signature": False})["aud"]
        == "https://other.example/token"
    )


def test_a_key_is_parsed_once_per_process(rsa_key, monkeypatch):
    """The PEM is parsed on first use only; later requests reuse the key object."""
    _client_auth._keys.clear()
    calls = []
    real = _client_auth._parse_key
    monkeypatch.setattr(_client_auth, "_parse_key", lambda data, where: calls.append(1) or real(data, where))
    settings = _key_settings(rsa_key)
    for _ in range(3):
        token_request(settings)
    assert len(calls) == 1
    first, _ = load_private_key(settings.private_key)
    assert load_private_key(settings.private_key)[0] is first


def test_a_replaced_key_is_a_new_cache_entry(rsa_key, ec_key):
    """The cache is keyed by the PEM's hash: another key is parsed, not mistaken for the old one."""
    first, alg1 = load_private_key(Secret(_pem(rsa_key)))
    second, alg2 = load_private_key(Secret(_pem(ec_key)))
    assert first is not second and (alg1, alg2) == ("RS256", "ES256")


@pytest.mark.parametrize(
    ("make", "alg", "message"),
    [
        (lambda: "not a key at all", None, "is not a PEM private key"),
        (
            lambda: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            "is not a usable PEM private key",
        ),
        (
            lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), b"pw"),
            None,
            "is an encrypted private key",
        ),
        (lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), None, "1024-bit RSA key"),
        (lambda: _pem(ec.generate_private_key(ec.SECP384R1())), None, "ES256 needs P-256"),
        (lambda: _pem(ed25519.Ed25519PrivateKey.generate()), None, "RSA or EC P-256 keys"),
        (
            lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "ES256",
            "does not fit the RSA key",
        ),
        (lambda: _pem(ec.generate_private_key(ec.SECP256R1())), "RS256", "does not fit the EC P-256 key"),
    ],
)
def test_unusable_keys_are_configuration_errors_without_key_material(make, alg, message):
    """Garbage, encrypted, weak, wrong-curve or mismatched keys: exit 3, naming the source, never the key."""
    pem = make()
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        load_private_key(Secret(pem, "QLAM_CLIENT_PRIVATE_KEY_FILE"), alg)
    text = str(caught.value) + repr(caught.value)
    assert caught.value.exit_code == 3 and "QLAM_CLIENT_PRIVATE_KEY_FILE" in text
    assert not any(line in text for line in _body_lines(pem))
    assert caught.value.__cause__ is None  # no chained library exception that could show key bytes
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_private_key_jwt_without_a_key_is_named():
    """QLAM_CLIENT_AUTH_METHOD=private_key_jwt without a key: a configuration error naming the variable."""
    with pytest.raises(ConfigurationError, match="QLAM_CLIENT_PRIVATE_KEY_FILE"):
        token_request(_settings(client_auth="private_key_jwt"))


def test_repr_of_private_key_jwt_shows_no_key(rsa_key):
    """The method object's repr names client, alg and kid only."""
    auth = client_authentication(_key_settings(rsa_key, key_id="k1"), "private_key_jwt")
    assert isinstance(auth, PrivateKeyJwt)
    assert repr(auth) == "PrivateKeyJwt(client_id='client-1', alg='RS256', key_id='k1')"


# --- which method, which credential ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "supported", "method"),
    [
        ({}, None, "client_secret_post"),
        ({"client_auth": "client_secret_basic"}, None, "client_secret_basic"),
        ({"private_key": Secret("pem")}, None, "private_key_jwt"),
        ({}, ("client_secret_post", "client_secret_basic"), "client_secret_basic"),
        ({}, ("client_secret_post",), "client_secret_post"),
        ({"private_key": Secret("pem")}, ("client_secret_basic", "private_key_jwt"), "private_key_jwt"),
        ({"client_auth": "client_secret_post"}, ("client_secret_basic",), "client_secret_post"),
    ],
)
def test_method_choice(fields, supported, method):
    """The setting wins; then a configured key; then the discovery document (basic first); else post."""
    assert choose_method(_settings(**fields), supported) == method


@pytest.mark.parametrize(
    ("fields", "supported", "message"),
    [
        ({"private_key": Secret("pem")}, ("client_secret_basic",), "a private key is configured"),
        ({}, ("private_key_jwt", "tls_client_auth"), "a client secret cannot be used"),
    ],
)
def test_method_the_server_cannot_take_is_refused(fields, supported, message):
    """A credential the identity provider does not accept is a configuration error, not a failed request."""
    with pytest.raises(ConfigurationError, match=message):
        choose_method(_settings(**fields), supported)


def test_only_the_credential_in_use_is_resolved(tmp_path, rsa_key):
    """With a private key, the secret's source is never read (here it would fail)."""
    from qlam_hpc._secrets import FileSecret

    broken = FileSecret(str(tmp_path / "missing"), origin="QLAM_CLIENT_SECRET_FILE")
    key_file = tmp_path / "key.pem"
    key_file.write_text(_pem(rsa_key))
    key_file.chmod(0o600)
    settings = _settings(
        client_secret=broken, private_key=FileSecret(str(key_file), origin="QLAM_CLIENT_PRIVATE_KEY_FILE")
    )
    assert uses_private_key(settings)
    resolved = resolve_credentials(settings)
    assert isinstance(resolved.private_key, Secret) and resolved.client_secret is broken


def test_fingerprint_follows_the_key(rsa_key, ec_key):
    """A replaced key gives a new fingerprint (so a recorded rejection no longer applies); it shows no key."""
    from qlam_hpc._oauth import credentials_match

    first = credentials_fingerprint(_key_settings(rsa_key))
    assert credentials_match(_key_settings(rsa_key), first)
    assert not credentials_match(_key_settings(ec_key), first)
    assert not credentials_match(_key_settings(rsa_key, key_id="k2"), first)
    assert not credentials_match(_settings(), first)


def test_assertions_are_fresh_per_attempt_in_time(rsa_key):
    """The assertion is dated by the clock given (the provider's), so a late retry is not expired."""
    settings = _key_settings(rsa_key)
    later = time.time() + 3600
    claims = jwt.decode(
        token_request(settings, now=later).form["client_assertion"], options={"verify_signature": False}
    )
    assert claims["iat"] == int(later)


# --- the assertion's audience -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "aud"),
    [
        ("", URL),
        ("token_endpoint", URL),
        ("issuer", "https://quera-identity.us.auth0.com/"),
        ("https://quera-identity.us.auth0.com/", "https://quera-identity.us.auth0.com/"),
    ],
)
def test_assertion_audience_setting(rsa_key, value, aud):
    """QLAM_CLIENT_ASSERTION_AUD: the token endpoint by default; the issuer (Auth0's tenant URL
    with its slash) or a URL."""
    env = {
        "QLAM_CLIENT_ID": "client-1",
        "AUTH_BASE_URL": "quera-identity.us.auth0.com",
        "QLAM_TOKEN_URL": URL,
        "QLAM_CLIENT_PRIVATE_KEY": _pem(rsa_key),
        "QLAM_CLIENT_ASSERTION_AUD": value,
        "HOME": "/h",
    }
    form = token_request(Settings.from_env(env)).form
    assert jwt.decode(form["client_assertion"], options={"verify_signature": False})["aud"] == aud


@pytest.mark.parametrize("value", ["tenant", "http://idp.example/"])
def test_bad_assertion_audience_is_named(value):
    """A word other than token_endpoint/issuer, or plain http, is refused naming the variable."""
    with pytest.raises(ConfigurationError, match="QLAM_CLIENT_ASSERTION_AUD"):
        Settings.from_env(
            {"QLAM_CLIENT_ID": "c", "AUTH_BASE_URL": "idp.example", "QLAM_CLIENT_ASSERTION_AUD": value, "HOME": "/h"}
        )


def test_an_html_answer_to_the_token_request_reads_as_one_clean_line(env, sandbox):
    """A portal's HTML page where a token was expected: exit 7, one line, no doubled words ("with with")."""
    from conftest import run_cli

    sandbox.set_faults(
        script=[{"status": 200, "body": "<!DOCTYPE html><html>portal</html>", "content_type": "text/html"}]
    )
    result = run_cli("token", env=env)
    assert result.code == 7, result.err
    (line,) = result.err.splitlines()
    assert line.endswith("answered HTTP 200 with an HTML page, not a token")
    assert not re.search(r"\b(\w+) \1\b", line)
