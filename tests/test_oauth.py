"""OAuth2 client_credentials messages: the request, the answer, and retry timing."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from qlam_hpc import _errors
from qlam_hpc._durations import format_duration
from qlam_hpc._oauth import (
    MAX_EXPIRES_IN,
    backoff_delay,
    credentials_fingerprint,
    parse_token_response,
    server_wait,
    token_request,
)
from qlam_hpc._settings import RetryPolicy, Secret, Settings

URL = "https://idp.example/oauth/token"
SECRET = "s3cr3t-Value-Never-Shown"
T0 = 1_700_000_000.0
JSON = {"content-type": "application/json"}
HTML = {"content-type": "text/html; charset=utf-8"}


def _settings(secret: str | None = SECRET, scope: str | None = None, client_id: str = "client-1") -> Settings:
    return Settings(
        client_id=client_id,
        audience="https://api.quera.com",
        token_url=URL,
        client_secret=Secret(secret) if secret else None,
        scope=scope,
        cache_dir=Path("/nonexistent"),
    )


def _parse(body, status: int = 200, headers=JSON):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, headers, raw, URL, T0, "node1:42")


GOOD = {"access_token": "eyJ.abc.def", "token_type": "Bearer", "expires_in": 86400, "scope": "read:tasks"}


# --- the request ----------------------------------------------------------------------------


def test_request_form_is_auth0_style():
    """The secret goes in the form body with grant_type, client_id and audience, to the token URL."""
    request = token_request(_settings())
    assert request.url == URL
    assert request.form == {
        "grant_type": "client_credentials",
        "client_id": "client-1",
        "client_secret": SECRET,
        "audience": "https://api.quera.com",
    }
    assert request.headers["Accept"] == "application/json"


def test_request_has_scope_only_when_set():
    """A configured scope is sent; without one the form has no scope field at all."""
    assert token_request(_settings(scope="read:tasks write:tasks")).form["scope"] == "read:tasks write:tasks"
    assert "scope" not in token_request(_settings(scope=None)).form
    assert "scope" not in token_request(_settings(scope="")).form


def test_request_without_secret_is_a_configuration_error():
    """With no secret, building a request fails with exit code 3 and names the variable."""
    with pytest.raises(_errors.ConfigurationError, match="QLAM_CLIENT_SECRET") as caught:
        token_request(_settings(secret=None))
    assert caught.value.exit_code == 3


# --- good answers ---------------------------------------------------------------------------


def test_good_answer():
    """A 200 with a Bearer token gives a Token expiring expires_in after the request was sent."""
    token = _parse(GOOD)
    assert token.access_token == "eyJ.abc.def"
    assert token.obtained_at == T0
    assert token.expires_at == T0 + 86400
    assert token.token_type == "Bearer"
    assert token.scope == "read:tasks"
    assert token.obtained_by == "node1:42"


def test_numeric_string_expires_in():
    """``"expires_in": "3600"`` (some IdPs send strings) is accepted as 3600 s."""
    assert _parse({**GOOD, "expires_in": "3600"}).expires_at == T0 + 3600


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", None, ""])
def test_token_type_is_case_insensitive_and_defaults_to_bearer(token_type):
    """Any spelling of Bearer, or no token_type, gives a Bearer token."""
    body = {**GOOD, "token_type": token_type}
    assert _parse(body).token_type == "Bearer"


def test_answer_without_scope():
    """An answer without a scope gives a token with scope None."""
    body = {k: v for k, v in GOOD.items() if k != "scope"}
    assert _parse(body).scope is None


def test_longest_allowed_lifetime():
    """A token living exactly the longest allowed time (366 days) is accepted."""
    assert _parse({**GOOD, "expires_in": MAX_EXPIRES_IN}).lifetime == MAX_EXPIRES_IN


# --- answers without a usable token ---------------------------------------------------------


def test_missing_expires_in():
    """An answer without expires_in cannot be cached safely and is refused."""
    body = {k: v for k, v in GOOD.items() if k != "expires_in"}
    with pytest.raises(_errors.InvalidTokenResponse, match="without expires_in"):
        _parse(body)


@pytest.mark.parametrize(
    "expires_in", [0, -1, -3600, 0.5, MAX_EXPIRES_IN + 1, 10 * 366 * 86400, 1e308, "0", "99999999999"]
)
def test_absurd_expires_in(expires_in):
    """Lifetimes under a second or over a year are refused as absurd."""
    with pytest.raises(_errors.InvalidTokenResponse, match="absurd expires_in"):
        _parse({**GOOD, "expires_in": expires_in})


@pytest.mark.parametrize(
    "expires_in",
    [
        "abc",
        "",
        [3600],
        {"s": 1},
        True,
        False,
        "nan",
        "inf",
        "-3600",
        " 3600",
        "3600.5",
        "1e3",
        "\u0663\u0666\u0660\u0660",
        None,
    ],
)
def test_unreadable_expires_in(expires_in):
    """An expires_in that is not a JSON number (a bool is not one) or a string of ASCII digits
    is refused, quoting what was sent: ``true`` used to be taken as 1 s."""
    if expires_in is None:
        return  # covered by test_missing_expires_in
    with pytest.raises(_errors.InvalidTokenResponse, match="expires_in="):
        _parse({**GOOD, "expires_in": expires_in})


@pytest.mark.parametrize("access_token", [None, "", "   ", 42, ["x"]])
def test_no_access_token(access_token):
    """A 200 without a non-empty string access_token is refused."""
    body = {**GOOD, "access_token": access_token}
    if access_token is None:
        del body["access_token"]
    with pytest.raises(_errors.InvalidTokenResponse, match="without an access_token"):
        _parse(body)


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "N_A", 5])
def test_non_bearer_token(token_type):
    """A token of another type is refused and the token itself is not in the message."""
    with pytest.raises(_errors.InvalidTokenResponse, match="not a Bearer token") as caught:
        _parse({**GOOD, "token_type": token_type})
    assert GOOD["access_token"] not in str(caught.value)


@pytest.mark.parametrize("status", [200, 203])
def test_html_page_on_success(status):
    """A 2xx HTML page (a login portal, a proxy) is refused as an HTML page, not a token."""
    page = b"<!DOCTYPE html><html><body>Welcome to the portal</body></html>"
    with pytest.raises(_errors.InvalidTokenResponse, match="HTML page, not a token") as caught:
        _parse(page, status=status, headers=HTML)
    assert "portal" not in str(caught.value)


def test_html_page_without_content_type():
    """An HTML body is recognised even when the server sent no content type."""
    with pytest.raises(_errors.InvalidTokenResponse, match="HTML page"):
        _parse(b"\n  <html><head></head></html>", headers={})


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_html_page_on_client_error(status):
    """A 4xx HTML page is not an OAuth error: it points at AUTH_BASE_URL."""
    with pytest.raises(_errors.InvalidTokenResponse, match=f"HTTP {status} with an HTML page.*AUTH_BASE_URL"):
        _parse(b"<html><body>404 Not Found</body></html>", status=status, headers=HTML)


def test_malformed_json():
    """A truncated JSON body is refused as malformed JSON."""
    with pytest.raises(_errors.InvalidTokenResponse, match="malformed JSON"):
        _parse(b'{"access_token": "abc", "expires_in": 36', headers=JSON)


@pytest.mark.parametrize("body", [b"[]", b'"token"', b"42"])
def test_json_that_is_not_an_object(body):
    """JSON that is not an object holds no token."""
    with pytest.raises(_errors.InvalidTokenResponse, match="not a token"):
        _parse(body)


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_empty_body(body):
    """An empty 200 answer is refused as an empty body."""
    with pytest.raises(_errors.InvalidTokenResponse, match="empty body"):
        _parse(body, headers={})


def test_plain_text_body():
    """A text body is described by its content type."""
    with pytest.raises(_errors.InvalidTokenResponse, match="text/plain body"):
        _parse(b"upstream connect error", headers={"content-type": "text/plain"})


# --- OAuth errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_client", _errors.InvalidClient),
        ("unauthorized_client", _errors.UnauthorizedClient),
        ("access_denied", _errors.AccessDenied),
        ("invalid_request", _errors.InvalidRequest),
        ("invalid_grant", _errors.InvalidGrant),
        ("invalid_scope", _errors.InvalidScope),
        ("unsupported_grant_type", _errors.UnsupportedGrantType),
    ],
)
def test_rfc6749_errors_map_to_classes(code, cls):
    """Each RFC 6749 error code raises its own class, an OAuthError with exit code 4."""
    with pytest.raises(cls) as caught:
        _parse({"error": code, "error_description": "nope"}, status=400)
    error = caught.value
    assert type(error) is cls
    assert isinstance(error, _errors.OAuthError)
    assert error.exit_code == 4
    assert (error.error, error.description, error.status, error.url) == (code, "nope", 400, URL)


def test_invalid_client_message():
    """A wrong secret gives InvalidClient, exit code 4, naming the IdP, the code and its description."""
    with pytest.raises(_errors.InvalidClient) as caught:
        _parse({"error": "invalid_client", "error_description": "Unauthorized"}, status=401)
    assert caught.value.exit_code == 4
    assert str(caught.value) == f"identity provider {URL} refused the token request (invalid_client: Unauthorized)"


def test_unknown_error_code_is_a_plain_oauth_error():
    """An error code outside RFC 6749 is an OAuthError, keeping the code."""
    with pytest.raises(_errors.OAuthError) as caught:
        _parse({"error": "too_many_attempts"}, status=403)
    assert type(caught.value) is _errors.OAuthError
    assert caught.value.error == "too_many_attempts"
    assert caught.value.description is None
    assert "too_many_attempts" in str(caught.value)


@pytest.mark.parametrize("description", [None, 42, ["a"]])
def test_error_without_a_text_description(description):
    """A missing or non-text error_description is left out of the message."""
    with pytest.raises(_errors.InvalidClient) as caught:
        _parse({"error": "invalid_client", "error_description": description}, status=401)
    assert caught.value.description is None
    assert str(caught.value).endswith("(invalid_client)")


def test_error_body_without_error_code():
    """A 4xx JSON body with no error code is not an OAuth error."""
    with pytest.raises(_errors.InvalidTokenResponse, match="HTTP 400"):
        _parse({"message": "bad"}, status=400)


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (401, HTML, f"<html><pre>client_secret={SECRET}</pre></html>".encode()),
        (400, {"content-type": "text/plain"}, f"bad form: client_secret={SECRET}".encode()),
        (400, JSON, json.dumps({"message": f"client_secret {SECRET} rejected"}).encode()),
        (400, JSON, f'{{"error": "invalid_client", "echo": "{SECRET}"'.encode()),
        (200, {"content-type": "text/plain"}, f"client_secret={SECRET}".encode()),
        (200, JSON, json.dumps({"access_token": SECRET, "token_type": "mac", "expires_in": 60}).encode()),
        (200, JSON, json.dumps({"access_token": SECRET, "expires_in": 0}).encode()),
    ],
)
def test_messages_never_echo_the_body(status, headers, body):
    """A body that echoes the secret (or carries a token) never gets into the error message."""
    with pytest.raises(_errors.QlamError) as caught:
        parse_token_response(status, headers, body, URL, T0, None)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


# --- server_wait and backoff ----------------------------------------------------------------


def test_retry_after_seconds():
    """``Retry-After: 30`` means wait 30 s."""
    assert server_wait({"retry-after": "30"}, T0) == 30


def test_retry_after_http_date():
    """``Retry-After`` as an HTTP date means wait until then."""
    when = datetime.fromtimestamp(T0 + 90, tz=timezone.utc)
    assert server_wait({"retry-after": format_datetime(when, usegmt=True)}, T0) == pytest.approx(90)


def test_retry_after_in_the_past_means_no_wait():
    """A date already past, or a negative number, is no wait at all."""
    past = format_datetime(datetime.fromtimestamp(T0 - 90, tz=timezone.utc), usegmt=True)
    assert server_wait({"retry-after": past}, T0) == 0
    assert server_wait({"retry-after": "-5"}, T0) == 0


def test_rate_limit_reset_epoch():
    """``X-RateLimit-Reset`` (an epoch time, as Auth0 sends) means wait until then."""
    assert server_wait({"x-ratelimit-reset": str(int(T0 + 45))}, T0) == 45
    assert server_wait({"x-ratelimit-reset": str(int(T0 - 45))}, T0) == 0


def test_retry_after_wins_over_rate_limit_reset():
    """With both headers, Retry-After decides."""
    assert server_wait({"retry-after": "5", "x-ratelimit-reset": str(T0 + 500)}, T0) == 5


def test_unreadable_retry_after_falls_back_to_rate_limit_reset():
    """A Retry-After that is neither seconds nor a date is skipped."""
    assert server_wait({"retry-after": "soon", "x-ratelimit-reset": str(T0 + 20)}, T0) == 20


@pytest.mark.parametrize("headers", [{}, {"retry-after": "soon"}, {"x-ratelimit-reset": "later"}, {"retry-after": ""}])
def test_no_usable_wait(headers):
    """Without a readable header there is no server wait (the caller backs off instead)."""
    assert server_wait(headers, T0) is None


@pytest.mark.parametrize("value", ["inf", "1e999", "Infinity"])
def test_server_wait_is_finite(value):
    """A nonsense Retry-After never becomes an infinite wait that crashes the 429 message."""
    wait = server_wait({"retry-after": value}, T0)
    assert wait is None or math.isfinite(wait)
    if wait is not None:
        format_duration(wait)


def test_backoff_grows_and_is_capped():
    """Full jitter: each delay lies in [0, min(max_delay, initial * 2**attempt)]."""
    policy = RetryPolicy(initial_delay=0.5, max_delay=10.0)
    rng = random.Random(1234)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (10, 10.0)]:
        delays = [backoff_delay(policy, attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling  # the whole range is used, not just its bottom


def test_backoff_is_jittered_and_reproducible():
    """Delays differ between draws, and a seeded random gives the same sequence again."""
    policy = RetryPolicy()

    def draws(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff_delay(policy, 3, rng) for _ in range(5)]

    assert draws(7) == draws(7)
    assert len(set(draws(7))) == 5
    assert draws(7) != draws(8)


# --- credentials_fingerprint ----------------------------------------------------------------


def credentials_match(settings: Settings, recorded: str) -> bool:
    from qlam_hpc._oauth import credentials_match

    return credentials_match(settings, recorded)


def test_fingerprint_changes_with_the_secret():
    """A record matches the secret it was made for; a rotated secret, or none, does not match."""
    recorded = credentials_fingerprint(_settings())
    assert credentials_match(_settings(), recorded)
    assert not credentials_match(_settings(secret="rotated-secret"), recorded)
    assert not credentials_match(_settings(secret=None), recorded)


def test_fingerprint_changes_with_the_client():
    """Another client id does not match."""
    assert not credentials_match(_settings(client_id="client-2"), credentials_fingerprint(_settings()))


def test_fingerprint_never_contains_the_secret():
    """The fingerprint names its KDF, salt and digest, and reveals no part of the secret."""
    fingerprint = credentials_fingerprint(_settings(secret="zz-not-hex-zz"))
    kdf, salt, digest = fingerprint.split("$")
    assert kdf in ("scrypt1", "pbkdf2-1") and len(salt) == 32 and len(digest) == 32
    int(salt, 16), int(digest, 16)
    assert "zz-not-hex-zz" not in fingerprint
    assert SECRET not in credentials_fingerprint(_settings())


@pytest.mark.parametrize(
    "recorded",
    ["0123456789abcdef", "", "scrypt1$zz$zz", "scrypt1$00$", "nope$00$00", "scrypt1$" + "0" * 32, "login"],
    ids=["old-unsalted", "empty", "not-hex", "no-digest", "unknown-kdf", "two-fields", "label"],
)
def test_old_or_broken_fingerprints_match_nothing(recorded):
    """An unsalted record of an older release, or a broken one, is simply not ours: no crash."""
    assert credentials_match(_settings(), recorded) is False


# --- token characters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "access_token",
    ["tökén", "eyJ.abc.d\u00e9f", "a b", "a=b", "=", "a,b", 'a"b', "a\\b", "ab==c", "\u200babc"],
    ids=[
        "non-ascii",
        "accent",
        "space",
        "inner-equals",
        "only-equals",
        "comma",
        "quote",
        "backslash",
        "equals-then-text",
        "zero-width",
    ],
)
def test_an_access_token_that_is_not_a_b64token_is_refused(access_token):
    """RFC 6750's b64token ([A-Za-z0-9-._~+/]+=*) only: anything else would be cached and
    shared, then crash every process that builds the header (UnicodeEncodeError)."""
    with pytest.raises(_errors.InvalidTokenResponse, match="malformed access_token") as caught:
        _parse({**GOOD, "access_token": access_token})
    assert access_token not in str(caught.value)


@pytest.mark.parametrize("access_token", ["eyJ.abc-_.d~+/", "abc=", "abc==", "A"])
def test_every_b64token_is_accepted(access_token):
    """Padding and the URL-safe and standard base64 alphabets are all b64token."""
    assert _parse({**GOOD, "access_token": access_token}).access_token == access_token


def _user(body: dict):
    from qlam_hpc._oauth import parse_user_tokens

    return parse_user_tokens(200, JSON, json.dumps(body).encode(), URL, T0, "node1:42")


@pytest.mark.parametrize("refresh_token", ["réfresh", "a\x01b", "a\x7fb", "a\nb", 42, True])
def test_a_refresh_token_that_is_not_vschar_is_refused(refresh_token):
    """RFC 6749 A.17: a refresh token is 1*VSCHAR (%x20-7E); anything else is refused."""
    with pytest.raises(_errors.InvalidTokenResponse, match="malformed refresh_token"):
        _user({**GOOD, "refresh_token": refresh_token})


def test_a_vschar_refresh_token_is_kept():
    """Printable ASCII, punctuation included, is a refresh token."""
    assert _user({**GOOD, "refresh_token": "v1.M~r+e/f=r!esh"}).refresh_token == "v1.M~r+e/f=r!esh"


# --- the fingerprint is salted and slow -------------------------------------------------------


def test_a_fingerprint_is_salted_each_time_it_is_made():
    """Two records of the same secret share nothing a guesser could precompute against."""
    assert credentials_fingerprint(_settings()) != credentials_fingerprint(_settings())


def test_a_fingerprint_is_not_one_sha256_of_the_secret():
    """The old fingerprint (SHA-256 over label, URL, client id, secret) let anyone who reads
    the store test a guess with one hash: it is no longer what is recorded."""
    import hashlib

    material = "\0".join(("qlam-hpc credentials v1", URL, "client-1", SECRET))
    old = hashlib.sha256(material.encode()).hexdigest()[:16]
    assert old not in credentials_fingerprint(_settings())
