"""Access tokens and the rules for when one may be handed out. Pure: no I/O.

The refresh margin follows the seed's ``min(60, expires_in)`` for real tokens
(24 h), but a margin equal to the whole lifetime would make a short-lived token
unusable the moment it arrives, so below four minutes of lifetime the margin is
a quarter of it. A token is handed out only while

    remaining lifetime > max(margin, min_ttl)

so no caller ever receives one that expires within the margin, and a caller
that asks for ``min_ttl`` gets a token that outlives its job step.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing itself costs the warm token path milliseconds
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, NamedTuple

MAX_MARGIN = 60.0


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token stops being handed out."""
    return min(MAX_MARGIN, lifetime / 4)


# Value objects on the warm ``qlam-hpc token`` path are namedtuples, not dataclasses:
# ``dataclasses`` imports ``inspect`` and would double the command's start-up time.
# The type checker reads the same fields, typed, from a NamedTuple that never runs.
if TYPE_CHECKING:  # pragma: no cover

    class _TokenFields(NamedTuple):
        access_token: str
        expires_at: float
        obtained_at: float
        token_type: str = "Bearer"
        scope: str | None = None
        obtained_by: str | None = None

else:
    _TokenFields = namedtuple(
        "_TokenFields",
        "access_token expires_at obtained_at token_type scope obtained_by",
        defaults=("Bearer", None, None),
    )


class Token(_TokenFields):
    """An access token and when it was obtained and expires (epoch seconds).

    Fields: ``access_token``, ``expires_at``, ``obtained_at``, ``token_type`` ("Bearer"),
    ``scope`` (granted, if the IdP said), ``obtained_by`` (``host:pid (job ...)``).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at!r}, obtained_by={self.obtained_by!r}, access_token=<hidden>)"

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    @property
    def margin(self) -> float:
        return refresh_margin(self.lifetime)

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def usable(self, now: float, min_ttl: float = 0.0) -> bool:
        """May this token be handed out at ``now`` to a caller needing ``min_ttl`` seconds?"""
        return self.expires_at - now > max(self.margin, min_ttl)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def authorization(self) -> str:
        """The value of the ``Authorization`` header."""
        return f"Bearer {self.access_token}"


#: A JWT payload larger or deeper than this is not a token qlam-hpc issued or reads: the
#: largest IdP tokens are a few KiB, their claims nest 3 levels at most.
CLAIMS_MAX_BYTES = 16 * 1024
CLAIMS_MAX_DEPTH = 32


def unverified_claims(access_token: str) -> dict[str, Any] | None:
    """The JWT payload of ``access_token``, *not verified*: for display only, never for trust.

    None when it is not a JWT, or its payload is over ``CLAIMS_MAX_BYTES`` or nested deeper
    than ``CLAIMS_MAX_DEPTH``: a token planted in a shared store must not crash its readers.
    """
    import base64

    from ._jsonlimits import parse_json

    parts = access_token.split(".")
    if len(parts) != 3 or len(parts[1]) > CLAIMS_MAX_BYTES * 4 // 3 + 4:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = parse_json(base64.urlsafe_b64decode(payload), max_bytes=CLAIMS_MAX_BYTES, max_depth=CLAIMS_MAX_DEPTH)
    except ValueError:  # not base64, not JSON, or over the limits (JsonLimitError)
        return None
    return claims if isinstance(claims, dict) else None
