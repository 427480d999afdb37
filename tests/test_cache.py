"""The shared cache entry: identity keys, encoding, and what an entry lets a process do."""

from __future__ import annotations

import json
import re

import pytest

from qlam_hpc import _errors
from qlam_hpc._cache import (
    CacheEntry,
    Failure,
    Identity,
    active_failure,
    cached_token,
    cooldown_for,
    decode_entry,
    encode_entry,
    fallback_token,
)
from qlam_hpc._tokens import Token

T0 = 1_700_000_000.0
DAY = 86400.0
IDENTITY = Identity("https://idp.example/oauth/token", "client-1", "https://api.quera.com", "read:tasks")
CREDS = "0123456789abcdef"
TOKEN = Token("access-token-1", expires_at=T0 + DAY, obtained_at=T0, scope="read:tasks", obtained_by="node1:42")
URL = IDENTITY.token_url


def _failure(until: float = T0 + 300, credentials: str = CREDS) -> Failure:
    error = _errors.InvalidClient("invalid_client", "Unauthorized", 401, URL)
    return Failure.from_error(error, at=T0, cooldown=until - T0, credentials=credentials, by="node1:42")


def _raw(**changes) -> bytes:
    data = json.loads(encode_entry(CacheEntry(IDENTITY, TOKEN, _failure())))
    data.update(changes)
    return json.dumps(data).encode()


# --- Identity.key -------------------------------------------------------------------------


def test_key_is_stable_and_file_name_safe():
    """The same identity always gives the same 32-hex-digit key, across equal instances."""
    again = Identity(IDENTITY.token_url, IDENTITY.client_id, IDENTITY.audience, IDENTITY.scope)
    assert IDENTITY.key() == again.key()
    assert re.fullmatch(r"[0-9a-f]{32}", IDENTITY.key())


def test_key_is_pinned():
    """The key format does not drift between releases, or old caches would be orphaned."""
    assert Identity("https://a/oauth/token", "c", "aud").key() == "bc98038bcbc1151fd5078e015e3b5f45"


@pytest.mark.parametrize(
    "other",
    [
        Identity("https://other.example/oauth/token", "client-1", "https://api.quera.com", "read:tasks"),
        Identity(IDENTITY.token_url, "client-2", "https://api.quera.com", "read:tasks"),
        Identity(IDENTITY.token_url, "client-1", "https://other-api.example", "read:tasks"),
        Identity(IDENTITY.token_url, "client-1", "https://api.quera.com", "write:tasks"),
        Identity(IDENTITY.token_url, "client-1", "https://api.quera.com", None),
    ],
)
def test_key_differs_per_field(other):
    """Changing any one of endpoint, client, audience or scope gives another cache entry."""
    assert other.key() != IDENTITY.key()


def test_key_does_not_confuse_shifted_fields():
    """Moving text from one field to the next does not collide (fields are separated)."""
    assert Identity("ab", "c", "d").key() != Identity("a", "bc", "d").key()


# --- encode / decode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        CacheEntry(IDENTITY, TOKEN, None),
        CacheEntry(IDENTITY, None, _failure()),
        CacheEntry(IDENTITY, TOKEN, _failure()),
        CacheEntry(IDENTITY, None, None),
        CacheEntry(Identity(URL, "c", "a", None), Token("t", T0 + 60, T0), None),
    ],
    ids=["token", "failure", "both", "empty", "minimal"],
)
def test_round_trip(entry):
    """An encoded entry decodes to an equal entry."""
    assert decode_entry(encode_entry(entry), entry.identity) == entry


def test_encoded_entry_is_compact_json():
    """The entry on disk is one line of JSON with a format number."""
    raw = encode_entry(CacheEntry(IDENTITY, TOKEN))
    assert b"\n" not in raw
    assert json.loads(raw)["format"] == 1


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe\x00", b'{"format": 1'], ids=repr)
def test_decode_rejects_corrupt_json(raw):
    """A torn or garbage file is a ValueError, not a crash."""
    with pytest.raises(ValueError):
        decode_entry(raw, IDENTITY)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"', b"null", _raw(format=2), _raw(format=None), _raw(format="1")])
def test_decode_rejects_wrong_format(raw):
    """JSON that is not a format-1 entry object is rejected as an unknown format."""
    with pytest.raises(ValueError, match="format"):
        decode_entry(raw, IDENTITY)


@pytest.mark.parametrize(
    "other",
    [
        Identity("https://other.example/oauth/token", "client-1", "https://api.quera.com", "read:tasks"),
        Identity(URL, "client-2", "https://api.quera.com", "read:tasks"),
        Identity(URL, "client-1", "https://api.example", "read:tasks"),
        Identity(URL, "client-1", "https://api.quera.com", None),
    ],
)
def test_decode_rejects_other_identity(other):
    """An entry written for another identity is never read as ours."""
    with pytest.raises(ValueError, match="another identity"):
        decode_entry(encode_entry(CacheEntry(IDENTITY, TOKEN)), other)


@pytest.mark.parametrize(
    "changes",
    [
        {"token": {"access_token": "x", "expires_at": "soon", "obtained_at": T0}},
        {"token": {"access_token": "x", "expires_at": None, "obtained_at": T0}},
        {"token": {"access_token": "x", "obtained_at": T0}},
        {"token": {"access_token": "", "expires_at": T0, "obtained_at": T0}},
        {"token": {"access_token": 42, "expires_at": T0, "obtained_at": T0}},
        {"token": {"expires_at": T0, "obtained_at": T0}},
        {"token": "a-bare-string"},
        {"token": [1, 2]},
        {"failure": {"error": "InvalidClient", "args": [], "at": "x", "until": T0, "credentials": CREDS}},
        {"failure": {"error": "InvalidClient", "args": 5, "at": T0, "until": T0, "credentials": CREDS}},
        {"failure": {"error": "InvalidClient", "at": T0, "until": T0, "credentials": CREDS}},
        {"failure": "boom"},
    ],
)
def test_decode_rejects_malformed_fields(changes):
    """A token or failure record with missing or mistyped fields is a ValueError."""
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_raw(**changes), IDENTITY)


# --- cached_token / fallback_token ----------------------------------------------------------


def test_cached_token_when_usable():
    """A usable token in the entry is handed out."""
    assert cached_token(CacheEntry(IDENTITY, TOKEN), T0 + 10) == TOKEN


def test_no_cached_token_without_entry_or_token():
    """No entry, or an entry holding only a failure, gives no token."""
    assert cached_token(None, T0) is None
    assert cached_token(CacheEntry(IDENTITY, None, _failure()), T0) is None


def test_rejected_token_is_never_returned():
    """A token the API refused is not handed out again, however valid it looks."""
    entry = CacheEntry(IDENTITY, TOKEN)
    assert cached_token(entry, T0, rejected=TOKEN.access_token) is None
    assert fallback_token(entry, T0, rejected=TOKEN.access_token) is None
    assert cached_token(entry, T0, rejected="some-older-token") == TOKEN


def test_cached_token_honours_min_ttl():
    """A token with less than min_ttl left is not handed out to that caller."""
    entry = CacheEntry(IDENTITY, TOKEN)
    now = T0 + DAY - 3000
    assert cached_token(entry, now, min_ttl=2000) == TOKEN
    assert cached_token(entry, now, min_ttl=3000) is None


def test_cached_token_respects_margin():
    """Within the refresh margin the cached token is not handed out."""
    assert cached_token(CacheEntry(IDENTITY, TOKEN), T0 + DAY - 30) is None


def test_fallback_token_inside_the_margin():
    """After a failed early refresh, a token inside its margin is still offered as a fallback."""
    entry = CacheEntry(IDENTITY, TOKEN)
    now = T0 + DAY - 90
    assert cached_token(entry, now, min_ttl=3600) is None
    assert fallback_token(entry, now) == TOKEN


def test_no_fallback_to_an_expiring_token():
    """Past the margin or after expiry there is no fallback."""
    entry = CacheEntry(IDENTITY, TOKEN)
    assert fallback_token(entry, T0 + DAY - 30) is None
    assert fallback_token(entry, T0 + DAY + 1) is None
    assert fallback_token(None, T0) is None


# --- active_failure ---------------------------------------------------------------------------


def test_failure_active_during_cool_down():
    """A failure record is repeated until its cool-down ends, then ignored."""
    failure = _failure(until=T0 + 300)
    entry = CacheEntry(IDENTITY, None, failure)
    assert active_failure(entry, T0 + 299.9, CREDS) == failure
    assert active_failure(entry, T0 + 300, CREDS) is None
    assert active_failure(entry, T0 + 1000, CREDS) is None


def test_failure_for_other_credentials_is_ignored():
    """A rotated secret (another fingerprint) is tried at once, not blocked by the old failure."""
    entry = CacheEntry(IDENTITY, None, _failure())
    assert active_failure(entry, T0 + 1, "fedcba9876543210") is None


def test_no_failure_without_entry_or_record():
    """No entry, or an entry without a failure record, has no active failure."""
    assert active_failure(None, T0, CREDS) is None
    assert active_failure(CacheEntry(IDENTITY, TOKEN), T0, CREDS) is None


def test_new_token_clears_failure():
    """Publishing a token drops the failure record; recording a failure keeps the token."""
    entry = CacheEntry(IDENTITY, None, _failure())
    assert entry.with_token(TOKEN).failure is None
    assert CacheEntry(IDENTITY, TOKEN).with_failure(_failure()).token == TOKEN


# --- Failure.from_error / to_error ----------------------------------------------------------

ERRORS = [
    _errors.InvalidClient("invalid_client", "Unauthorized", 401, URL),
    _errors.InvalidScope("invalid_scope", None, 403, URL),
    _errors.OAuthError("server_exploded", "weird", 400, URL),
    _errors.RateLimited("identity provider is rate limiting (HTTP 429)", 12.5),
    _errors.RateLimited("identity provider is rate limiting (HTTP 429)"),
    _errors.IdentityProviderUnreachable(f"identity provider {URL} is unreachable (ConnectError)"),
    _errors.InvalidTokenResponse(f"identity provider {URL} answered with an HTML page"),
    _errors.TokenLifetimeTooShort(7200, 3600),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_failure_round_trip_rebuilds_the_error(error):
    """Another process gets the same class, message and exit code as the one that failed."""
    failure = Failure.from_error(error, at=T0, cooldown=60, credentials=CREDS, by="n1:1")
    rebuilt = decode_entry(encode_entry(CacheEntry(IDENTITY, None, failure)), IDENTITY).failure.to_error()
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert rebuilt.exit_code == error.exit_code


def test_failure_round_trip_keeps_error_details():
    """OAuth details and the rate-limit wait survive the trip through the cache."""
    invalid = Failure.from_error(ERRORS[0], at=T0, cooldown=60, credentials=CREDS, by=None).to_error()
    details = (invalid.error, invalid.description, invalid.status, invalid.url)
    assert details == ("invalid_client", "Unauthorized", 401, URL)
    assert invalid.exit_code == 4
    limited = Failure.from_error(ERRORS[3], at=T0, cooldown=60, credentials=CREDS, by=None).to_error()
    assert limited.retry_after == 12.5


def test_failure_times():
    """from_error records when it happened and until when it stands."""
    failure = Failure.from_error(ERRORS[0], at=T0, cooldown=300, credentials=CREDS, by="n1:1")
    assert (failure.at, failure.until, failure.credentials, failure.by) == (T0, T0 + 300, CREDS, "n1:1")


@pytest.mark.parametrize(
    ("error", "args"),
    [("NoSuchError", ["x"]), ("Token", ["x"]), ("__builtins__", []), ("InvalidClient", ["too", "few"])],
)
def test_unknown_or_broken_failure_becomes_a_generic_error(error, args):
    """A record naming no known error class, or with wrong args, is still reported as a QlamError."""
    rebuilt = Failure(error, tuple(args), T0, T0 + 60, CREDS).to_error()
    assert type(rebuilt) is _errors.QlamError
    assert error in str(rebuilt)


# --- cooldown_for ---------------------------------------------------------------------------


def _cooldown(error):
    return cooldown_for(error, rejected_cooldown=300, transient_cooldown=15)


def test_rejected_credentials_cool_down_long():
    """Any OAuth refusal is repeated for the long cool-down."""
    assert _cooldown(ERRORS[0]) == 300
    assert _cooldown(ERRORS[2]) == 300


def test_rate_limit_cools_down_as_long_as_asked():
    """A rate limit is repeated for the IdP's wait, capped by the long cool-down."""
    assert _cooldown(_errors.RateLimited("429", 42)) == 42
    assert _cooldown(_errors.RateLimited("429", 3600)) == 300


def test_transient_failures_cool_down_briefly():
    """Outages, garbage answers and a rate limit with no stated wait are repeated only briefly."""
    assert _cooldown(_errors.RateLimited("429")) == 15
    assert _cooldown(ERRORS[5]) == 15
    assert _cooldown(ERRORS[6]) == 15
