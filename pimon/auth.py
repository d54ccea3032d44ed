"""Bearer tokens: read them from a header and compare them in constant time."""

from __future__ import annotations

import hmac

WRITE_TOKEN_NEEDED = "this needs the cluster token: Authorization: Bearer <token>"
READ_TOKEN_NEEDED = "this monitor needs a read token: Authorization: Bearer <token>"


def bearer(header: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header value, if any."""
    scheme, _, value = (header or "").partition(" ")
    value = value.strip()
    return value if value and scheme.lower() == "bearer" else None


def token_matches(given: str | None, expected: str) -> bool:
    """Compare tokens in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def may_write(header: str | None, expected: str | None) -> bool:
    """Tell whether a request with this Authorization header may write."""
    return not expected or token_matches(bearer(header), expected)
