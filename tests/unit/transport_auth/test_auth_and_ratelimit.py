"""Token verification and the token bucket (pure logic)."""

from __future__ import annotations

import jwt
import pytest

from tether.transport.auth import Identity, TokenError, TokenVerifier, mint_token
from tether.transport.ratelimit import TokenBucket

SECRET = b"k" * 32


def test_round_trip() -> None:
    token = mint_token(SECRET, "alice", name="Alice", ttl_s=60)
    identity = TokenVerifier(SECRET).verify(token)
    assert (identity.user_id, identity.name) == ("alice", "Alice")
    assert identity.expires_at is not None


def test_name_defaults_to_user_id() -> None:
    assert TokenVerifier(SECRET).verify(mint_token(SECRET, "bob")).name == "bob"


def test_expired_token_is_flagged() -> None:
    token = mint_token(SECRET, "alice", ttl_s=-3600)
    with pytest.raises(TokenError) as info:
        TokenVerifier(SECRET).verify(token)
    assert info.value.expired


def test_wrong_secret_rejected() -> None:
    token = mint_token(b"x" * 32, "alice")
    with pytest.raises(TokenError, match=r"^invalid token: Signature verification failed$"):
        TokenVerifier(SECRET).verify(token)


def test_missing_exp_rejected_unless_allowed() -> None:
    token = mint_token(SECRET, "alice", ttl_s=None)
    with pytest.raises(TokenError, match="exp"):
        TokenVerifier(SECRET).verify(token)
    assert TokenVerifier(SECRET, require_expiry=False).verify(token).user_id == "alice"


def test_algorithm_none_rejected() -> None:
    token = jwt.encode({"sub": "mallory", "exp": 2**40}, key=None, algorithm="none")
    with pytest.raises(TokenError):
        TokenVerifier(SECRET).verify(token)


@pytest.mark.parametrize("sub", ["", "a" * 129, "has space", 42])
def test_bad_subject(sub: object) -> None:
    token = jwt.encode({"sub": sub, "exp": 2**40}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError):
        TokenVerifier(SECRET).verify(token)


def test_garbage_token() -> None:
    with pytest.raises(TokenError):
        TokenVerifier(SECRET).verify("not-a-jwt")


def test_dev_identities_only_in_dev_mode() -> None:
    with pytest.raises(TokenError):
        TokenVerifier(SECRET).verify("dev:alice")
    assert TokenVerifier(SECRET, dev_mode=True).verify("dev:alice:Alice A") == Identity(
        "alice", "Alice A"
    )


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError, match=r"^Expected a secret of at least 32 bytes, got 3$"):
        TokenVerifier(b"abc")


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)  # one token refilled
    assert not bucket.take(0.1)
    assert bucket.take(10.0, cost=3)  # refill caps at burst
    assert not bucket.take(10.0)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1, now=0)
