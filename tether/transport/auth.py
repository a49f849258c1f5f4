"""Client tokens: minting and verification (pure; no I/O).

A client proves who it is with a JWT signed with HS256 by the server's secret
(see ``docs/protocol.md``, "The token"). Claims:

* ``sub`` (required): the user id, 1..128 characters.
* ``name`` (optional): display name, at most 128 characters.
* ``exp`` (required unless the operator sets ``require_token_expiry = false``).
* ``iat`` / ``nbf`` (optional).
* ``admin`` (optional): ``true`` grants the operator console's HTTP API
  (``/admin/``, see ``docs/console.md``); ``tether token --admin`` sets it.

``--dev`` mode additionally accepts self-issued identities of the form
``dev:<user id>[:<display name>]``: convenient for local demos, never safe on a
reachable server, and the server logs a warning at start when it is on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
MAX_USER_ID = 128
MAX_NAME = 128
DEV_PREFIX = "dev:"


class TokenError(Exception):
    """The token is not acceptable; ``expired`` tells whether a fresh one would do."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the client is.

    Attributes:
        user_id: the ``sub`` claim.
        name: display name (the ``name`` claim, or the user id).
        expires_at: ``exp`` as seconds since the epoch, or ``None``.
        admin: the token carries ``"admin": true`` (operator console access);
            never true for ``--dev`` identities.
    """

    user_id: str
    name: str
    expires_at: float | None = None
    admin: bool = False


def _check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID:
        raise TokenError(f"sub must be a string of 1..{MAX_USER_ID} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in user_id):
        raise TokenError("sub must not contain whitespace or control characters")
    return user_id


def _check_name(name: object, user_id: str) -> str:
    if name is None:
        return user_id
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise TokenError(f"name must be a string of at most {MAX_NAME} characters")
    return name or user_id


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Verifies client tokens.

    Args:
        secret: the HS256 key (at least 32 bytes).
        require_expiry: reject tokens without ``exp``.
        leeway_s: clock skew tolerated on ``exp``/``nbf``.
        dev_mode: also accept ``dev:<user>[:<name>]`` identities.
    """

    secret: bytes
    require_expiry: bool = True
    leeway_s: float = 30.0
    dev_mode: bool = False

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise ValueError(f"Expected a secret of at least 32 bytes, got {len(self.secret)}")

    def verify(self, token: str) -> Identity:
        """Return the identity a token proves.

        Raises:
            TokenError: malformed, badly signed, expired (``expired=True``) or
                with invalid claims.
        """
        if self.dev_mode and token.startswith(DEV_PREFIX):
            user_id, _, name = token[len(DEV_PREFIX) :].partition(":")
            user_id = _check_user_id(user_id)
            return Identity(user_id, _check_name(name or None, user_id))
        options: dict[str, object] = {"require": ["sub", "exp"] if self.require_expiry else ["sub"]}
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                leeway=self.leeway_s,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired", expired=True) from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        user_id = _check_user_id(claims.get("sub"))
        exp = claims.get("exp")
        return Identity(
            user_id,
            _check_name(claims.get("name"), user_id),
            float(exp) if isinstance(exp, int | float) else None,
            claims.get("admin") is True,
        )


def mint_token(
    secret: bytes,
    user_id: str,
    *,
    name: str | None = None,
    ttl_s: float | None = 86400.0,
    admin: bool = False,
) -> str:
    """Mint a client token for ``user_id`` (what ``tether token`` prints).

    Args:
        secret: the server's HS256 key.
        user_id: the ``sub`` claim.
        name: optional display name.
        ttl_s: lifetime in seconds; ``None`` mints a token without ``exp``
            (accepted only when the server has ``require_token_expiry = false``).
        admin: add the ``"admin": true`` claim (operator console access).

    Raises:
        TokenError: if the user id or name is invalid.
    """
    _check_user_id(user_id)
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now}
    if name is not None:
        claims["name"] = _check_name(name, user_id)
    if ttl_s is not None:
        claims["exp"] = now + int(ttl_s)
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
