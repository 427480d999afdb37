"""The shared cache entry: identity keys, encoding, and what an entry lets a process do."""

from __future__ import annotations

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


# The on-disk text of CacheEntry(IDENTITY, TOKEN, _failure()), as a release writes it.
GOLDEN = (
    b"qlam-hpc token cache v1\n"
    b"token_url=https://idp.example/oauth/token\n"
    b"client_id=client-1\n"
    b"audience=https://api.quera.com\n"
    b"scope=read:tasks\n"
    b"access_token=access-token-1\n"
    b"token_type=Bearer\n"
    b"expires_at=1700086400.0\n"
    b"obtained_at=1700000000.0\n"
    b"token_scope=read:tasks\n"
    b"obtained_by=node1:42\n"
    b'failure={"error":"InvalidClient","args":["invalid_client","Unauthorized",401,'
    b'"https://idp.example/oauth/token"],"at":1700000000.0,"until":1700000300.0,'
    b'"credentials":"0123456789abcdef","by":"node1:42"}\n'
    b"end\n"
)
MAGIC_LINE = "qlam-hpc token cache v1"


def _fields(raw: bytes) -> dict[str, str]:
    """The name=value lines of an encoded entry, in order."""
    lines = raw.decode().split("\n")
    assert lines[0] == MAGIC_LINE and lines[-2:] == ["end", ""]
    return dict(line.partition("=")[::2] for line in lines[1:-2])


def _raw(**changes: str | None) -> bytes:
    """A valid entry (token and failure) with some fields changed; ``None`` removes a field."""
    fields = _fields(encode_entry(CacheEntry(IDENTITY, TOKEN, _failure())))
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return _text(*(f"{name}={value}" for name, value in fields.items()))


def _text(*lines: str) -> bytes:
    """An entry with these lines between the first line and the end marker."""
    return ("\n".join([MAGIC_LINE, *lines, "end"]) + "\n").encode()


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


def test_encoded_entry_is_pinned():
    """The on-disk text does not drift between releases, so nodes running different releases share one entry."""
    assert encode_entry(CacheEntry(IDENTITY, TOKEN, _failure())) == GOLDEN


def test_golden_entry_decodes():
    """An entry written by this format version is read back field for field."""
    assert decode_entry(GOLDEN, IDENTITY) == CacheEntry(IDENTITY, TOKEN, _failure())


def test_encoded_entry_is_line_based_text():
    """The entry is a header line, then one name=value per line in a fixed order, ending with a newline."""
    raw = encode_entry(CacheEntry(IDENTITY, TOKEN))
    assert raw.startswith(b"qlam-hpc token cache v1\n")
    assert raw.endswith(b"\n")
    fields = _fields(raw)
    assert list(fields) == [
        "token_url",
        "client_id",
        "audience",
        "scope",
        "access_token",
        "token_type",
        "expires_at",
        "obtained_at",
        "token_scope",
        "obtained_by",
    ]
    assert fields["expires_at"] == repr(T0 + DAY)
    assert fields["token_scope"] == "read:tasks"


def test_failure_line_only_with_a_failure_record():
    """``failure=`` is written only when there is a failure record, and holds it as JSON."""
    assert "failure" not in _fields(encode_entry(CacheEntry(IDENTITY, TOKEN)))
    assert list(_fields(encode_entry(CacheEntry(IDENTITY, None, None)))) == [
        "token_url",
        "client_id",
        "audience",
        "scope",
    ]
    failure = _fields(encode_entry(CacheEntry(IDENTITY, None, _failure())))["failure"]
    assert failure.startswith('{"error":"InvalidClient",')


def test_values_containing_equals_signs_round_trip():
    """Only the first '=' of a line separates name and value, so padded tokens survive."""
    token = Token("abc==", T0 + 60, T0, scope="a=b", obtained_by="host=1:2")
    entry = CacheEntry(Identity(URL + "?x=1", "c=d", "aud=e", "s=f"), token)
    assert decode_entry(encode_entry(entry), entry.identity) == entry


def test_line_breaks_in_a_failure_message_round_trip():
    """Free text in a failure record may hold line breaks: it is JSON-escaped on its one line."""
    error = _errors.InvalidClient("invalid_client", "bad\nsecret\r\nreally", 401, URL)
    failure = Failure.from_error(error, at=T0, cooldown=60, credentials=CREDS, by="n1:1")
    raw = encode_entry(CacheEntry(IDENTITY, None, failure))
    assert raw.count(b"\n") == 7  # magic, four identity fields, failure, end
    assert decode_entry(raw, IDENTITY).failure.to_error().description == "bad\nsecret\r\nreally"


@pytest.mark.parametrize(
    "entry",
    [
        CacheEntry(IDENTITY, TOKEN._replace(access_token="tok\nen")),
        CacheEntry(IDENTITY, TOKEN._replace(access_token="token\r")),
        CacheEntry(IDENTITY, TOKEN._replace(scope="read:tasks\nadmin")),
        CacheEntry(IDENTITY, TOKEN._replace(obtained_by="node1:42\r\n")),
        CacheEntry(IDENTITY._replace(audience="https://api.quera.com\naccess_token=forged"), TOKEN),
        CacheEntry(IDENTITY._replace(scope="\n"), None),
    ],
    ids=["access_token-lf", "access_token-cr", "token_scope", "obtained_by", "audience", "scope"],
)
def test_encode_refuses_line_breaks(entry):
    """A value with a line break would forge or split lines, so encode_entry refuses it."""
    with pytest.raises(ValueError, match="line break"):
        encode_entry(entry)


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00", b"qlam-hpc token cache v1\nclient_id=\xff\n"], ids=repr)
def test_decode_rejects_non_utf8(raw):
    """Bytes that are not UTF-8 text are a ValueError, not a crash."""
    with pytest.raises(ValueError, match="not text"):
        decode_entry(raw, IDENTITY)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n",
        b"not an entry\n",
        b'{"format":1,"token_url":"https://idp.example/oauth/token","client_id":"client-1"}',
        GOLDEN.replace(b"cache v1", b"cache v2", 1),
        GOLDEN.replace(b"\n", b"\r\n"),
        b"\n" + GOLDEN,
        "\ufeff".encode() + GOLDEN,
        GOLDEN[:-1],
    ],
    ids=["empty", "blank", "garbage", "old-json", "v2", "crlf", "leading-blank", "bom", "no-final-newline"],
)
def test_decode_rejects_unknown_format_or_truncation(raw):
    """Anything but the v1 header line, or a file without its final newline, is rejected."""
    with pytest.raises(ValueError, match="unknown format or truncated"):
        decode_entry(raw, IDENTITY)


def test_truncated_copy_is_rejected():
    """Every copy of a valid entry cut inside a line (a torn read or write) is a ValueError."""
    cuts = [cut for cut in range(len(GOLDEN)) if GOLDEN[cut - 1 : cut] != b"\n"]
    assert len(cuts) > 400
    for cut in cuts:
        with pytest.raises(ValueError):
            decode_entry(GOLDEN[:cut], IDENTITY)


def test_copy_cut_at_a_line_boundary_is_rejected():
    """A copy of a valid entry that lost its last lines is rejected, not read as an entry without them."""
    lost = []
    for cut in [i + 1 for i, byte in enumerate(GOLDEN[:-1]) if byte == ord("\n")]:
        try:
            decode_entry(GOLDEN[:cut], IDENTITY)
        except ValueError:
            continue
        lost.append(GOLDEN[cut:].split(b"\n")[0].partition(b"=")[0].decode())
    assert lost == []  # today: the token, its scope, obtained_by or the failure record go missing


@pytest.mark.parametrize(
    "raw",
    [
        GOLDEN.replace(b"\nclient_id=", b"\nthis line has no equals sign\nclient_id="),
        GOLDEN.replace(b"\nclient_id=", b"\n\nclient_id="),
        GOLDEN[: -len(b"end\n")] + b"trailing garbage\nend\n",
    ],
    ids=["text", "empty-line", "trailing"],
)
def test_decode_rejects_lines_without_equals(raw):
    """A line that is not name=value means the file is not ours or is damaged."""
    with pytest.raises(ValueError, match="without '='"):
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


@pytest.mark.parametrize("name", ["token_url", "client_id", "audience", "scope"])
def test_decode_rejects_missing_identity_field(name):
    """An entry that does not name all of its identity is not taken to be ours."""
    with pytest.raises(ValueError, match="another identity"):
        decode_entry(_raw(**{name: None}), IDENTITY)


def test_empty_scope_is_no_scope():
    """An identity with scope "" and one with None share one entry, and each reads it."""
    entry = CacheEntry(Identity(URL, "c", "a", None), TOKEN)
    assert decode_entry(encode_entry(entry), Identity(URL, "c", "a", "")).token == TOKEN
    assert Identity(URL, "c", "a", None).key() == Identity(URL, "c", "a", "").key()


@pytest.mark.parametrize(
    "changes",
    [
        {"expires_at": "inf"},
        {"expires_at": "-inf"},
        {"expires_at": "nan"},
        {"expires_at": "Infinity"},
        {"expires_at": "1e999"},
        {"obtained_at": "nan"},
        {"obtained_at": "inf"},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_decode_rejects_non_finite_times(changes):
    """A token that would never expire (or never be usable) is refused, not trusted forever."""
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_raw(**changes), IDENTITY)


@pytest.mark.parametrize(
    "changes",
    [
        {"expires_at": "soon"},
        {"expires_at": ""},
        {"obtained_at": "yesterday"},
        {"expires_at": None},
        {"obtained_at": None},
        {"access_token": ""},
        {"failure": "boom"},
        {"failure": "{"},
        {"failure": "[]"},
        {"failure": "null"},
        {"failure": '"x"'},
        {"failure": '{"error":"InvalidClient","args":[],"at":"x","until":1,"credentials":"c"}'},
        {"failure": '{"error":"InvalidClient","args":5,"at":1,"until":1,"credentials":"c"}'},
        {"failure": '{"error":"InvalidClient","at":1,"until":1,"credentials":"c"}'},
        {"failure": '{"error":"InvalidClient","args":[],"at":1,"credentials":"c"}'},
    ],
    ids=lambda c: "-".join(f"{k}={v}"[:40] for k, v in c.items()),
)
def test_decode_rejects_malformed_fields(changes):
    """A token or failure record with missing, empty or unparsable fields is a ValueError."""
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_raw(**changes), IDENTITY)


@pytest.mark.parametrize("until", ["Infinity", "NaN", "1e999"])
def test_decode_rejects_non_finite_failure_times(until):
    """A failure record standing until infinity (or NaN) is rejected, as non-finite token times are."""
    failure = f'{{"error":"InvalidClient","args":[],"at":{T0},"until":{until},"credentials":"{CREDS}"}}'
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_raw(failure=failure), IDENTITY)


def test_optional_token_fields_default():
    """Empty token_type, token_scope and obtained_by read as Bearer, None and None."""
    token = decode_entry(_raw(token_type="", token_scope="", obtained_by=""), IDENTITY).token
    assert (token.token_type, token.scope, token.obtained_by) == ("Bearer", None, None)


# --- value objects ------------------------------------------------------------------------


def test_entry_repr_never_shows_the_access_token():
    """An entry in a log line or traceback shows the token's expiry, never the token itself."""
    entry = CacheEntry(IDENTITY, TOKEN, _failure())
    for shown in (repr(entry), str(entry), f"{entry}", repr(TOKEN), str(TOKEN)):
        assert TOKEN.access_token not in shown
    assert "hidden" in repr(TOKEN)
    assert repr(T0 + DAY) in repr(TOKEN)


@pytest.mark.parametrize(
    "value", [IDENTITY, TOKEN, _failure(), CacheEntry(IDENTITY, TOKEN)], ids=lambda v: type(v).__name__
)
def test_value_objects_are_immutable(value):
    """Fields cannot be reassigned and no attributes can be added; changes make copies."""
    with pytest.raises(AttributeError):
        value.__setattr__(value._fields[0], "changed")
    with pytest.raises(AttributeError):
        value.extra = 1


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
    assert active_failure(entry, T0 + 299.9, CREDS.__eq__, longest=LONGEST) == failure
    assert active_failure(entry, T0 + 300, CREDS.__eq__, longest=LONGEST) is None
    assert active_failure(entry, T0 + 1000, CREDS.__eq__, longest=LONGEST) is None


def test_failure_for_other_credentials_is_ignored():
    """A rotated secret (another fingerprint) is tried at once, not blocked by the old failure."""
    entry = CacheEntry(IDENTITY, None, _failure())
    assert active_failure(entry, T0 + 1, "fedcba9876543210".__eq__, longest=LONGEST) is None


def test_no_failure_without_entry_or_record():
    """No entry, or an entry without a failure record, has no active failure."""
    assert active_failure(None, T0, CREDS.__eq__, longest=LONGEST) is None
    assert active_failure(CacheEntry(IDENTITY, TOKEN), T0, CREDS.__eq__, longest=LONGEST) is None


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


# --- malformed tokens in an entry -----------------------------------------------------------


@pytest.mark.parametrize(
    "access_token",
    ["tökén", "access token", "a=b", "=", "abc\x7f", "a,b", 'a"b', "a\tb", "ab==c"],
    ids=["non-ascii", "space", "inner-equals", "only-equals", "del", "comma", "quote", "tab", "equals-then-text"],
)
def test_decode_discards_an_access_token_that_is_not_a_b64token(access_token):
    """A token an older release cached, or someone planted, that cannot go in an
    Authorization header (RFC 6750 b64token) is a corrupt entry, not a crash in every process."""
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_raw(access_token=access_token), IDENTITY)


@pytest.mark.parametrize("access_token", ["eyJ.abc-_.d~+/", "abc=", "abc==", "A"])
def test_decode_keeps_b64tokens(access_token):
    """Every b64token, padding included, still reads back."""
    assert decode_entry(_raw(access_token=access_token), IDENTITY).token.access_token == access_token


def _login_raw(refresh_token: str) -> bytes:
    from qlam_hpc._cache import Login

    login = Login("refresh-1", T0, T0 + DAY, "auth0|ada", "ada@example.org")
    fields = _fields(encode_entry(CacheEntry(IDENTITY, TOKEN, None, login)))
    fields["refresh_token"] = refresh_token
    return _text(*(f"{name}={value}" for name, value in fields.items()))


@pytest.mark.parametrize("refresh_token", ["réfresh", "a\x01b", "\x7f"], ids=["non-ascii", "control", "del"])
def test_decode_discards_a_refresh_token_that_is_not_vschar(refresh_token):
    """A refresh token outside RFC 6749's VSCHAR (%x20-7E) cannot be sent back: the entry is corrupt."""
    with pytest.raises(ValueError, match="malformed"):
        decode_entry(_login_raw(refresh_token), IDENTITY)


def test_decode_keeps_a_vschar_refresh_token():
    """Any printable ASCII refresh token reads back."""
    assert decode_entry(_login_raw("v1.Mr~e+f/r=e!sh"), IDENTITY).login.refresh_token == "v1.Mr~e+f/r=e!sh"


# --- failure records against the reader's clock -----------------------------------------------

LONGEST = 300.0


def _record(at: float, until: float) -> Failure:
    return Failure("InvalidClient", ("invalid_client", None, 401, URL), at, until, CREDS, "fast-clock:1")


def test_a_failure_from_a_writer_whose_clock_is_days_ahead_is_ignored():
    """A record dated two days in the reader's future says nothing about now: ignored."""
    record = _record(T0 + 2 * DAY, T0 + 2 * DAY + 300)
    assert not record.stands(T0, longest=LONGEST)
    assert active_failure(CacheEntry(IDENTITY, None, record), T0, CREDS.__eq__, longest=LONGEST) is None


def test_a_failure_dated_within_the_skew_still_stands():
    """A writer a few seconds ahead (ordinary clock skew) is believed."""
    record = _record(T0 + 5, T0 + 305)
    assert record.stands(T0, longest=LONGEST)
    assert active_failure(CacheEntry(IDENTITY, None, record), T0, CREDS.__eq__, longest=LONGEST) == record


def test_a_failure_longer_than_the_readers_longest_cool_down_is_clamped():
    """until - at beyond what the reader would write (48 h for 5 min) ends at at + longest."""
    record = _record(T0, T0 + 2 * DAY)
    assert record.ends(LONGEST) == T0 + LONGEST
    assert record.stands(T0 + LONGEST - 1, longest=LONGEST)
    assert not record.stands(T0 + LONGEST, longest=LONGEST)
    assert not record.stands(T0 + DAY, longest=LONGEST)


def test_a_failure_is_compared_only_while_it_stands():
    """The credentials (a slow KDF) are compared only for a record that still stands."""
    compared = []
    entry = CacheEntry(IDENTITY, None, _record(T0, T0 + 300))
    assert active_failure(entry, T0 + 400, compared.append, longest=LONGEST) is None
    assert compared == []
