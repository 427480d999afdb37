"""Standard authorization servers: QLAM_TOKEN_URL, discovery, client_secret_basic, the resource parameter.

Besides the sandbox (Auth0-style), a small standards-only server runs here on loopback:
its token endpoint is not /oauth/token, it accepts only client_secret_basic (RFC 6749's
mandatory method, as Keycloak or Okta may be configured) and reads the API from RFC
8707's ``resource``. It is a real HTTP server; qlam-hpc talks to it unchanged.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import pytest

from conftest import FAST_RETRY, run_cli
from qlam_hpc import ConfigurationError, InvalidTokenResponse, Settings, TokenProvider
from qlam_hpc._discovery import DEFAULT_AUTH_METHODS, parse_discovery

SECRET = "standard-s3cr3t"
PREFIX = "/realms/hpc"


class StandardServer:
    """An OAuth 2.0 server with discovery, Basic client authentication and resource indicators."""

    def __init__(self, methods: list[str] | None = ("client_secret_basic",)) -> None:  # type: ignore[assignment]
        self.methods = methods
        self.discovery_gets = 0
        self.forms: list[dict] = []
        self.authorizations: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{PREFIX}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "9")
                self.end_headers()
                self.wfile.write(b"Not Found")

            def do_GET(self) -> None:
                if self.path != PREFIX + "/.well-known/openid-configuration":
                    self._not_found()
                    return
                server.discovery_gets += 1
                doc = {"issuer": server.url, "token_endpoint": server.url + "/protocol/openid-connect/token"}
                if server.methods is not None:
                    doc["token_endpoint_auth_methods_supported"] = list(server.methods)
                self._json(200, doc)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                server.forms.append(form)
                authorization = self.headers.get("Authorization")
                server.authorizations.append(authorization)
                if self.path != PREFIX + "/protocol/openid-connect/token":
                    self._not_found()
                    return
                expected = "Basic " + base64.b64encode(f"std-client:{SECRET}".encode()).decode()
                if authorization != expected or "client_secret" in form:
                    self._json(401, {"error": "invalid_client", "error_description": "bad client credentials"})
                    return
                if form.get("resource") != "https://api.example.com":
                    self._json(400, {"error": "invalid_target", "error_description": "resource required"})
                    return
                self._json(
                    200,
                    {"access_token": "std-token-" + str(len(server.forms)), "token_type": "bearer", "expires_in": 300},
                )

        return Handler


@pytest.fixture
def standard():
    server = StandardServer()
    yield server
    server.stop()


def _standard_env(server: StandardServer, cache_dir, **extra: str) -> dict[str, str]:
    return {
        "AUTH_BASE_URL": server.url,
        "QLAM_CLIENT_ID": "std-client",
        "QLAM_CLIENT_SECRET": SECRET,
        "QLAM_AUDIENCE": "https://api.example.com",
        "QLAM_AUDIENCE_PARAM": "resource",
        "QLAM_TOKEN_CACHE_DIR": str(cache_dir),
        **extra,
    }


# --- the document ---------------------------------------------------------------------------


def _doc(status: int = 200, **fields) -> bytes:
    return json.dumps(
        {"issuer": "https://idp.example/", "token_endpoint": "https://idp.example/token", **fields}
    ).encode()


def test_parse_discovery_reads_endpoint_and_methods():
    """The token endpoint and the auth methods are taken from the document."""
    found = parse_discovery(
        200, {}, _doc(token_endpoint_auth_methods_supported=["private_key_jwt"]), "https://idp.example/d"
    )
    assert (found.token_endpoint, found.auth_methods) == ("https://idp.example/token", ("private_key_jwt",))


def test_methods_default_to_basic():
    """Without token_endpoint_auth_methods_supported, OpenID's default client_secret_basic applies."""
    assert (
        parse_discovery(200, {}, _doc(), "https://idp.example/d").auth_methods
        == DEFAULT_AUTH_METHODS
        == ("client_secret_basic",)
    )


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (404, b"not found", ConfigurationError, "no discovery document at https://idp.example/d (HTTP 404)"),
        (200, b"<html>login</html>", InvalidTokenResponse, "without a JSON discovery document"),
        (200, json.dumps({"issuer": "x"}).encode(), InvalidTokenResponse, "names no token_endpoint"),
        (200, _doc(token_endpoint="http://idp.example/token"), ConfigurationError, "https is required"),
        (200, _doc(token_endpoint_auth_methods_supported="basic"), InvalidTokenResponse, "malformed"),
    ],
)
def test_unusable_documents(status, body, error, message):
    """Missing, non-JSON, endpoint-less, plain-http or malformed documents are one-line errors."""
    with pytest.raises(error, match=re.escape(message)):
        parse_discovery(status, {}, body, "https://idp.example/d")


# --- settings ---------------------------------------------------------------------------------


BASE = {"QLAM_CLIENT_ID": "c", "AUTH_BASE_URL": "https://idp.example/tenant", "HOME": "/home/alice"}


def test_token_url_variable_is_used_as_given():
    """QLAM_TOKEN_URL is the endpoint itself: nothing is appended."""
    settings = Settings.from_env({**BASE, "QLAM_TOKEN_URL": "https://idp.example/oauth2/v1/token"})
    assert settings.token_url == "https://idp.example/oauth2/v1/token" and settings.discovery_url is None


def test_token_url_alone_needs_no_base_url():
    """With QLAM_TOKEN_URL, AUTH_BASE_URL is not needed."""
    settings = Settings.from_env({"QLAM_CLIENT_ID": "c", "QLAM_TOKEN_URL": "https://idp.example/token", "HOME": "/h"})
    assert settings.token_url == "https://idp.example/token"


def test_token_url_follows_the_http_rules():
    """QLAM_TOKEN_URL over plain http to a remote host is refused, naming the variable."""
    with pytest.raises(ConfigurationError, match=r"QLAM_TOKEN_URL 'http://idp.example/token' uses plain http"):
        Settings.from_env({**BASE, "QLAM_TOKEN_URL": "http://idp.example/token"})


def test_discovery_on():
    """QLAM_DISCOVERY=on: the document under AUTH_BASE_URL; the token endpoint will come from it."""
    settings = Settings.from_env({**BASE, "QLAM_DISCOVERY": "on"})
    assert settings.discovery_url == "https://idp.example/tenant/.well-known/openid-configuration"
    assert settings.discovers_endpoint and settings.token_url == settings.discovery_url


def test_discovery_with_an_explicit_token_url():
    """With QLAM_TOKEN_URL too, discovery chooses the auth method only."""
    settings = Settings.from_env({**BASE, "QLAM_DISCOVERY": "on", "QLAM_TOKEN_URL": "https://idp.example/t"})
    assert settings.discovery_url and not settings.discovers_endpoint


def test_discovery_by_url():
    """QLAM_DISCOVERY may name the document, e.g. RFC 8414's oauth-authorization-server."""
    url = "https://idp.example/.well-known/oauth-authorization-server"
    assert Settings.from_env({**BASE, "QLAM_DISCOVERY": url}).discovery_url == url


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QLAM_DISCOVERY", "maybe"),
        ("QLAM_AUDIENCE_PARAM", "aud"),
        ("QLAM_CLIENT_AUTH_METHOD", "tls_client_auth"),
        ("QLAM_CLIENT_ASSERTION_ALG", "HS256"),
    ],
)
def test_bad_values_are_named(variable, value):
    """Unknown values of the new settings are configuration errors naming the variable."""
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({**BASE, variable: value})


def test_setting_names_are_case_insensitive():
    """client_secret_basic / RESOURCE / es256 are accepted in any case and normalised."""
    settings = Settings.from_env(
        {
            **BASE,
            "QLAM_CLIENT_AUTH_METHOD": "Client_Secret_Basic",
            "QLAM_AUDIENCE_PARAM": "RESOURCE",
            "QLAM_CLIENT_ASSERTION_ALG": "es256",
        }
    )
    assert (settings.client_auth, settings.audience_param, settings.assertion_alg) == (
        "client_secret_basic",
        "resource",
        "ES256",
    )


# --- against real servers ---------------------------------------------------------------------


def test_a_standard_server_through_discovery(standard, tmp_path):
    """Discovery finds the non-Auth0 endpoint and Basic authentication; the API goes out as resource."""
    settings = Settings.from_env(_standard_env(standard, tmp_path, QLAM_DISCOVERY="on")).with_(retry=FAST_RETRY)
    result = TokenProvider(settings).get()
    assert result.source == "fetched" and result.token.access_token == "std-token-1"
    (form,) = standard.forms
    assert form == {"grant_type": "client_credentials", "resource": "https://api.example.com"}
    assert standard.authorizations[0].startswith("Basic ")


def test_the_document_is_read_once_per_process(tmp_path):
    """Two fetches in one process read the discovery document once."""
    server = StandardServer()
    try:
        settings = Settings.from_env(_standard_env(server, tmp_path, QLAM_DISCOVERY="on", QLAM_TOKEN_CACHE="off"))
        TokenProvider(settings).get()
        TokenProvider(settings).get()
        assert (server.discovery_gets, len(server.forms)) == (1, 2)
    finally:
        server.stop()


def test_a_standard_server_with_explicit_settings(standard, tmp_path):
    """Without discovery: QLAM_TOKEN_URL and QLAM_CLIENT_AUTH_METHOD=client_secret_basic do the same."""
    env = _standard_env(
        standard,
        tmp_path,
        QLAM_TOKEN_URL=standard.url + "/protocol/openid-connect/token",
        QLAM_CLIENT_AUTH_METHOD="client_secret_basic",
    )
    assert TokenProvider(Settings.from_env(env)).get().source == "fetched"
    assert standard.discovery_gets == 0


def test_auth0_style_defaults_fail_clearly_against_it(standard, tmp_path):
    """With Auth0's defaults the standard server's 404 is a clear error, and the secret is not shown."""
    env = _standard_env(standard, tmp_path, QLAM_RETRY_ATTEMPTS="1")
    result = run_cli("token", env=env)
    assert result.code == 7 and "/realms/hpc/oauth/token answered HTTP 404" in result.err
    assert "is AUTH_BASE_URL right?" in result.err
    assert SECRET not in result.err


def test_the_sandbox_through_discovery(sandbox, env, tmp_path):
    """QLAM_DISCOVERY=on against the sandbox: the token comes from the discovered endpoint; status names it."""
    case = {**env, "QLAM_DISCOVERY": "on", "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "c")}
    assert run_cli("token", env=case).code == 0
    status = run_cli("auth", "status", env=case)
    assert f"at {sandbox.url}/.well-known/openid-configuration" in status.out
    assert run_cli("token", env=case).code == 0 and sandbox.stats()["token_requests"] == 1


def test_resource_mode_against_the_sandbox(sandbox, settings):
    """QLAM_AUDIENCE_PARAM=resource: the sandbox issues a token for that API (aud claim)."""
    import jwt

    token = TokenProvider(settings.with_(audience_param="resource")).get_token()
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == sandbox.audience


def test_a_discovery_document_that_is_missing_is_a_configuration_error(sandbox, env, tmp_path):
    """QLAM_DISCOVERY pointing at nothing: exit 3 naming the URL, no token request."""
    case = {**env, "QLAM_DISCOVERY": sandbox.url + "/nothing-here", "QLAM_TOKEN_CACHE_DIR": str(tmp_path / "c")}
    result = run_cli("token", env=case)
    assert result.code == 3 and "no discovery document at" in result.err
    assert sandbox.stats()["token_requests"] == 0
