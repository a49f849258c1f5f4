"""ReceiptLog and Typists: the pure receipt and typing rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.actors.receipts import ReceiptLog, Typists


def test_delivered_is_the_best_device_and_read_implies_delivered() -> None:
    log = ReceiptLog()
    log.add_member("bob")
    assert log.ack("bob", "phone", delivered=3, read=None, last_seq=10)
    assert log.ack("bob", "laptop", delivered=7, read=None, last_seq=10)
    assert log.position("bob") == (7, 0)
    assert not log.ack("bob", "phone", delivered=5, read=None, last_seq=10)  # below laptop
    assert log.ack("bob", "phone", delivered=None, read=9, last_seq=10)
    assert log.position("bob") == (9, 9)


def test_positions_never_move_back_and_are_capped() -> None:
    log = ReceiptLog()
    log.add_member("bob")
    log.ack("bob", "d", delivered=5, read=4, last_seq=10)
    assert not log.ack("bob", "d", delivered=2, read=1, last_seq=10)
    log.ack("bob", "d", delivered=50, read=40, last_seq=12)
    assert log.position("bob") == (12, 12)


def test_changes_are_coalesced_until_taken() -> None:
    log = ReceiptLog()
    log.load("bob", read=2, devices={"d": 3})
    log.add_member("carol")
    log.ack("bob", "d", delivered=4, read=None, last_seq=9)
    log.ack("bob", "d", delivered=6, read=5, last_seq=9)
    log.ack("carol", "x", delivered=1, read=None, last_seq=9)
    users, reads, devices = log.take_changes()
    assert users == [("bob", 6, 5), ("carol", 1, 0)]
    assert reads == {"bob": 5}
    assert devices == {("bob", "d"): 6, ("carol", "x"): 1}
    assert not log.has_changes
    assert log.take_changes() == ([], {}, {})


def test_non_members_and_removed_members() -> None:
    log = ReceiptLog()
    assert not log.ack("mallory", "d", delivered=1, read=1, last_seq=5)
    log.add_member("bob")
    log.ack("bob", "d", delivered=1, read=1, last_seq=5)
    log.remove_member("bob")
    assert log.take_changes() == ([], {}, {})
    assert log.position("bob") == (0, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.one_of(st.none(), st.integers(0, 30)),
            st.one_of(st.none(), st.integers(0, 30)),
            st.integers(0, 20),
        ),
        max_size=40,
    )
)
def test_positions_are_monotonic_and_bounded(
    acks: list[tuple[str, int | None, int | None, int]],
) -> None:
    log = ReceiptLog()
    log.add_member("u")
    last_seq = 0
    previous = (0, 0)
    for device, delivered, read, grow in acks:
        last_seq += grow
        log.ack("u", device, delivered=delivered, read=read, last_seq=last_seq)
        now = log.position("u")
        assert now[0] >= previous[0]
        assert now[1] >= previous[1]
        assert now[1] <= now[0] <= last_seq
        previous = now


def test_typists_expire_and_stop() -> None:
    typing = Typists()
    assert typing.start("bob", deadline=5.0)
    assert not typing.start("bob", deadline=8.0)  # a refresh is not a change
    assert typing.start("carol", deadline=6.0)
    assert typing.users() == ["bob", "carol"]
    assert typing.next_deadline() == 6.0
    assert not typing.expire(now=5.5)
    assert typing.expire(now=6.0)
    assert typing.users() == ["bob"]
    assert typing.stop("bob")
    assert not typing.stop("bob")
    assert typing.next_deadline() is None
