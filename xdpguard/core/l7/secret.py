"""The challenge secret as a value: the key that signs the challenge cookies (HMAC-SHA256 in
HAProxy, haproxy_config.py) and, after a rotation, the previous key that still checks them.

    Secrets(current, previous, previous_until)   previous checks cookies until previous_until
    rotated(s, now, keep_s)                      a new current; the old one kept keep_s seconds
    to_json(s) / from_json(data, where)          the cluster store's value (l7 secret key)

A cookie carries its own expiry under the MAC, at most a cookie lifetime (the longest
`challenge_ttl`) after it was issued; so a previous key kept that long after the rotation checks
every cookie it signed until the cookie itself expires, and none after. Pure: no files, no store
(engine.py keeps it on disk, cluster/store.py in etcd).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets as _random
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import UserError
from .spec import HttpService

SECRET_BYTES = 32


def new_key() -> bytes:
    return _random.token_bytes(SECRET_BYTES)


@dataclass(frozen=True)
class Secrets:
    current: bytes
    previous: bytes | None = None
    previous_until: float = 0.0  # unix time

    def __post_init__(self) -> None:
        for k in (self.current, self.previous):
            if k is not None and len(k) != SECRET_BYTES:
                raise ValueError(f"a challenge key is {SECRET_BYTES} bytes, got {len(k)}")

    def checking(self, now: float) -> bytes | None:
        """The previous key while it still checks cookies at `now`, else None."""
        if self.previous is None or now >= self.previous_until or self.previous == self.current:
            return None
        return self.previous

    def __repr__(self) -> str:  # never print a key (logs, tracebacks)
        return f"Secrets(previous={'yes' if self.previous else 'no'}, previous_until={self.previous_until:.0f})"


def cookie_lifetime(services: Iterable[HttpService]) -> int:
    """How long a cookie issued now may live: the longest challenge lifetime of `services` (the
    default one when there is none)."""
    return max((svc.challenge_ttl_s for svc in services), default=HttpService.challenge_ttl_s)


def rotated(s: Secrets, now: float, keep_s: float) -> Secrets:
    """A new current key; the old current checks cookies for keep_s more seconds (a cookie
    lifetime: cookie_lifetime)."""
    return Secrets(new_key(), s.current, now + keep_s)


def _b64(k: bytes) -> str:
    return base64.b64encode(k).decode("ascii")


def to_json(s: Secrets) -> str:
    d: dict = {"current": _b64(s.current)}
    if s.previous is not None:
        d |= {"previous": _b64(s.previous), "previous_until": s.previous_until}
    return json.dumps(d, sort_keys=True)


def from_json(data: bytes | str, where: str) -> Secrets:
    """A Secrets from its JSON; UserError naming `where` and the problem (never a key's bytes)."""

    def key(v) -> bytes:
        if not isinstance(v, str):
            raise ValueError("a key must be a base64 string")
        try:
            k = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a key is not base64") from None
        if len(k) != SECRET_BYTES:
            raise ValueError(f"a key must be {SECRET_BYTES} bytes, got {len(k)}")
        return k

    try:
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        prev, until = d.get("previous"), d.get("previous_until", 0.0)
        if isinstance(until, bool) or not isinstance(until, (int, float)) or not math.isfinite(until):
            raise ValueError("previous_until must be a unix time")
        return Secrets(key(d.get("current")), None if prev is None else key(prev), float(until))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: not a challenge secret ({str(exc)[:80]})") from None
