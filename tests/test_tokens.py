"""Tokens and when one may be handed out: refresh_margin, Token, unverified_claims."""

from __future__ import annotations

import base64
import json

import pytest

from qlam_hpc._tokens import MAX_MARGIN, Token, refresh_margin, unverified_claims

T0 = 1_700_000_000.0
DAY = 86400.0
SECRET_TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJlLXNlY3JldA"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims, header=None) -> str:
    header = header or {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(b"not-a-real-signature"))
    )


def _token(lifetime: float = DAY, access_token: str = SECRET_TOKEN) -> Token:
    return Token(access_token=access_token, expires_at=T0 + lifetime, obtained_at=T0)


# --- refresh_margin ------------------------------------------------------------------------


def test_margin_of_a_day_long_token_is_a_minute():
    """A 24 h token stops being handed out 60 s before it expires."""
    assert refresh_margin(DAY) == 60
    assert MAX_MARGIN == 60


@pytest.mark.parametrize("lifetime", [240, 3600, DAY, 366 * DAY])
def test_margin_never_exceeds_a_minute(lifetime):
    """From four minutes of lifetime upwards the margin is capped at 60 s."""
    assert refresh_margin(lifetime) == 60


@pytest.mark.parametrize(("lifetime", "margin"), [(120, 30), (60, 15), (4, 1), (200, 50)])
def test_margin_of_a_short_token_is_a_quarter_of_its_lifetime(lifetime, margin):
    """A short-lived token keeps three quarters of its life usable instead of none."""
    assert refresh_margin(lifetime) == margin


def test_short_token_is_usable_when_it_arrives():
    """A 60 s token is handed out at once, not refused because the margin swallowed it."""
    token = _token(lifetime=60)
    assert token.margin == 15
    assert token.usable(T0)


# --- Token.usable / expired ---------------------------------------------------------------


def test_usable_until_the_margin():
    """A day-long token is usable until 60 s before expiry, and not at exactly 60 s."""
    token = _token()
    assert token.usable(T0)
    assert token.usable(T0 + DAY - 60.001)
    assert not token.usable(T0 + DAY - 60)
    assert not token.usable(T0 + DAY - 1)


def test_min_ttl_larger_than_margin_governs():
    """A caller asking for an hour gets the token only while more than an hour is left."""
    token = _token()
    assert token.usable(T0 + DAY - 3600.5, min_ttl=3600)
    assert not token.usable(T0 + DAY - 3600, min_ttl=3600)
    assert not token.usable(T0 + DAY - 1800, min_ttl=3600)


def test_min_ttl_smaller_than_margin_does_not_shrink_it():
    """Asking for less than the margin still keeps the 60 s margin."""
    token = _token()
    assert not token.usable(T0 + DAY - 30, min_ttl=5)


def test_min_ttl_longer_than_lifetime_is_never_usable():
    """No moment satisfies a min_ttl longer than the token lives."""
    token = _token(lifetime=3600)
    assert not token.usable(T0, min_ttl=3600)
    assert not token.usable(T0 - 100, min_ttl=7200)


def test_expired_from_expiry_on():
    """A token is expired at and after expires_at, and not one moment before."""
    token = _token(lifetime=3600)
    assert not token.expired(T0)
    assert not token.expired(T0 + 3599.999)
    assert token.expired(T0 + 3600)
    assert token.expired(T0 + 7200)


def test_within_margin_is_not_usable_but_not_expired():
    """Inside the margin a token is still valid (a fallback) but no longer handed out."""
    token = _token()
    now = T0 + DAY - 30
    assert not token.usable(now)
    assert not token.expired(now)


def test_lifetime_and_remaining():
    """lifetime and remaining are measured from obtained_at and from now."""
    token = _token(lifetime=3600)
    assert token.lifetime == 3600
    assert token.remaining(T0 + 600) == 3000
    assert token.remaining(T0 + 4000) == -400


# --- authorization and repr ---------------------------------------------------------------


def test_authorization_header_value():
    """The Authorization header is ``Bearer <token>``."""
    assert _token(access_token="abc.def.ghi").authorization == "Bearer abc.def.ghi"


def test_repr_never_shows_the_token():
    """repr, str and f-strings of a Token leave the access token out."""
    token = Token(
        access_token=SECRET_TOKEN, expires_at=T0 + DAY, obtained_at=T0, scope="read:tasks", obtained_by="n1:42"
    )
    for shown in (repr(token), str(token), f"{token}", repr([token]), repr({"t": token})):
        assert SECRET_TOKEN not in shown
        assert "c2VjcmV0" not in shown
    assert "expires_at" in repr(token)


def test_token_is_immutable():
    """A Token cannot be altered after creation (it is shared between threads)."""
    token = _token()
    with pytest.raises(AttributeError):
        token.expires_at = 0  # type: ignore[misc]


# --- unverified_claims --------------------------------------------------------------------


def test_claims_of_a_jwt():
    """The payload of a JWT is decoded, whatever its padding."""
    claims = {"iss": "https://idp.example/", "sub": "client@clients", "aud": "https://api.quera.com", "exp": 1700086400}
    assert unverified_claims(_jwt(claims)) == claims


@pytest.mark.parametrize("pad", ["", "x", "xx", "xxx"])
def test_claims_with_every_payload_length(pad):
    """Payloads of every length modulo 4 decode, so unpadded base64url is handled."""
    claims = {"sub": "c" + pad}
    assert unverified_claims(_jwt(claims)) == claims


def test_claims_with_url_safe_characters():
    """Payload bytes that encode to ``-`` and ``_`` in base64url decode correctly."""
    claims = {"scope": "\u00ff\u00fe>>>???"}
    token = _jwt(claims)
    assert "-" in token.split(".")[1] or "_" in token.split(".")[1]
    assert unverified_claims(token) == claims


@pytest.mark.parametrize(
    "access_token",
    [
        "",
        "opaque-token-without-dots",
        "a.b",
        "a.b.c.d",
        "header.!!!!.sig",
        "header.abcde.sig",
        "header." + _b64(b"not json") + ".sig",
        "header." + _b64(b"\xff\xfe\x00garbage") + ".sig",
        "header." + _b64(b"[1, 2, 3]") + ".sig",
        "header." + _b64(b'"a string"') + ".sig",
        "..",
    ],
)
def test_claims_of_garbage_are_none(access_token):
    """Opaque tokens and damaged JWTs give None instead of raising."""
    assert unverified_claims(access_token) is None
