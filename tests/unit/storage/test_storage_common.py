"""Argument checks and encodings shared by the stores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.storage._common import (
    check_history_args,
    check_int,
    check_kind,
    check_user_ids,
    direct_key,
    new_room_id,
    pack_body,
    unpack_body,
)
from tether.storage.models import DIRECT_KEY_LENGTH
from tether.storage.records import MAX_ROOM_ID_LENGTH, MAX_USER_ID_LENGTH

user_ids = st.text(min_size=1, max_size=MAX_USER_ID_LENGTH)


@given(user_ids, user_ids)
def test_direct_key_is_symmetric(a: str, b: str) -> None:
    assert direct_key(a, b) == direct_key(b, a)


@given(user_ids, user_ids, user_ids, user_ids)
def test_direct_key_is_unambiguous(a: str, b: str, c: str, d: str) -> None:
    if {a, b} != {c, d}:
        assert direct_key(a, b) != direct_key(c, d)


def test_direct_key_fits_its_column() -> None:
    longest = direct_key("a" * MAX_USER_ID_LENGTH, "b" * MAX_USER_ID_LENGTH)
    assert len(longest) <= DIRECT_KEY_LENGTH


def test_new_room_ids_are_url_safe_and_fresh() -> None:
    ids = {new_room_id() for _ in range(1000)}
    assert len(ids) == 1000
    for room_id in ids:
        assert len(room_id) == 16 <= MAX_ROOM_ID_LENGTH
        assert room_id.replace("-", "").replace("_", "").isalnum()


def test_check_int_bounds() -> None:
    assert check_int("seq", 0) == 0
    assert check_int("seq", 2**63 - 1) == 2**63 - 1
    with pytest.raises(
        ValueError, match=r"^Expected seq in 0\.\.9223372036854775807, got 9223372036854775808$"
    ):
        check_int("seq", 2**63)
    with pytest.raises(ValueError, match=r"^Expected seq to be an int, got float$"):
        check_int("seq", 1.0)


def test_check_kind() -> None:
    assert check_kind("public") == "public"
    assert check_kind("private") == "private"
    with pytest.raises(ValueError, match=r"^Expected kind 'public' or 'private', got 'PUBLIC'$"):
        check_kind("PUBLIC")


def test_check_user_ids_dedupes_in_order() -> None:
    assert check_user_ids(["b", "a", "b"]) == ["b", "a"]
    assert check_user_ids(iter(["x"])) == ["x"]
    with pytest.raises(
        ValueError, match=r"^Expected user_ids to be a collection of ids, got a single string$"
    ):
        check_user_ids("abc")


def test_check_history_args() -> None:
    check_history_args(None, None, 500)
    check_history_args(0, 0, 1)
    with pytest.raises(ValueError, match=r"^Expected after_seq to be an int, got str$"):
        check_history_args(None, "1", 5)  # type: ignore[arg-type]


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text() | st.integers(0, 100), children, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_bodies_round_trip(body: object) -> None:
    assert unpack_body(pack_body(body)) == body


def test_unserialisable_body() -> None:
    with pytest.raises(ValueError, match=r"^Expected a msgpack-serialisable body: "):
        pack_body({1, 2})
    with pytest.raises(ValueError, match=r"^Expected a msgpack-serialisable body: "):
        pack_body(2**64)
