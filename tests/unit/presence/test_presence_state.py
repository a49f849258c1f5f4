"""PresenceState: unit and property tests of the pure presence rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.actors.presence import PresenceSnapshot, PresenceState, Status


def test_first_connection_announces_online() -> None:
    state = PresenceState("alice")
    snap = state.connect(1, "phone")
    assert snap == PresenceSnapshot("alice", Status.ONLINE, 1, None)


def test_devices_count_distinct_device_ids() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    assert state.connect(2, "laptop") is None  # a second tab: same device
    snap = state.connect(3, "phone")
    assert snap is not None
    assert snap.devices == 2
    assert state.connection_count == 3


def test_one_device_closing_keeps_user_online() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    state.connect(2, "phone")
    snap = state.disconnect(2, now_ms=1000)
    assert snap == PresenceSnapshot("alice", Status.ONLINE, 1, None)


def test_last_connection_enters_grace_silently() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    assert state.disconnect(1, now_ms=5000) is None
    assert state.in_grace
    assert state.published.status is Status.ONLINE  # subscribers still see online


def test_reconnect_within_grace_produces_no_event() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    state.disconnect(1, now_ms=5000)
    assert state.connect(2, "laptop") is None
    assert not state.in_grace
    assert state.grace_expired(now_ms=9000) is None


def test_grace_expiry_announces_offline_with_last_seen() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    state.disconnect(1, now_ms=5000)
    snap = state.grace_expired(now_ms=40000)
    assert snap == PresenceSnapshot("alice", Status.OFFLINE, 0, 5000)


def test_deliberate_leave_skips_grace() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    snap = state.disconnect(1, now_ms=7000, deliberate=True)
    assert snap == PresenceSnapshot("alice", Status.OFFLINE, 0, 7000)
    assert not state.in_grace


def test_presumed_online_after_restart_returns_without_an_event() -> None:
    state = PresenceState("u")
    state.presume_online(2, now_ms=500)
    assert state.in_grace
    assert (state.published.status, state.published.devices) == (Status.ONLINE, 2)
    # the first device back: still online (only the device count may move)
    first = state.connect(1, "phone")
    assert first is not None
    assert (first.status, first.devices) == (Status.ONLINE, 1)
    assert state.connect(2, "laptop") is not None  # two devices again
    assert state.published.status is Status.ONLINE
    one = PresenceState("v")
    one.presume_online(1, now_ms=500)
    assert one.connect(1, "phone") is None  # back as it was: nothing to announce


def test_presumed_online_who_never_returns_goes_offline_at_grace_end() -> None:
    state = PresenceState("u", last_seen_ms=100)
    state.presume_online(1, now_ms=500)
    snapshot = state.grace_expired(now_ms=9_000)
    assert snapshot == PresenceSnapshot("u", Status.OFFLINE, 0, 500)


def test_presume_online_is_ignored_once_connected() -> None:
    state = PresenceState("u")
    state.connect(1, "d")
    state.presume_online(3, now_ms=500)
    assert not state.in_grace
    assert state.published.devices == 1


def test_away_when_every_device_idle() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    state.connect(2, "phone")
    assert state.set_idle(1, True) is None
    snap = state.set_idle(2, True)
    assert snap is not None
    assert snap.status is Status.AWAY
    snap = state.set_idle(1, False)
    assert snap is not None
    assert snap.status is Status.ONLINE


def test_idle_device_leaving_makes_remaining_active_user_online() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    state.connect(2, "phone")
    state.set_idle(1, True)
    state.set_idle(2, True)
    snap = state.disconnect(2, now_ms=1)
    assert snap is not None
    assert (snap.status, snap.devices) == (Status.AWAY, 1)


def test_connect_twice_is_a_caller_bug() -> None:
    state = PresenceState("alice")
    state.connect(1, "laptop")
    with pytest.raises(ValueError, match=r"^Expected a new connection id, got live 1$"):
        state.connect(1, "laptop")


def test_unknown_disconnect_and_idle_are_ignored() -> None:
    state = PresenceState("alice")
    assert state.disconnect(9, now_ms=1) is None
    assert state.set_idle(9, True) is None


def test_wire_shape() -> None:
    snap = PresenceSnapshot("bob", Status.AWAY, 2, 17)
    assert snap.to_wire() == {"user": "bob", "status": "away", "devices": 2, "last_seen": 17}


# -- properties --------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, 5), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("disconnect"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("idle"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("expire"), st.just(0), st.just(None)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_published_view_matches_model(ops: list[tuple[str, int, object]]) -> None:
    """Announcements are never repeated, and settle on the true state."""
    state = PresenceState("u")
    live: dict[int, tuple[str, bool]] = {}
    announced: list[PresenceSnapshot] = []
    now = 0
    for kind, conn, arg in ops:
        now += 1000
        if kind == "connect":
            if conn in live:
                continue
            live[conn] = (str(arg), False)
            snap = state.connect(conn, str(arg))
        elif kind == "disconnect":
            live.pop(conn, None)
            snap = state.disconnect(conn, now, deliberate=bool(arg))
        elif kind == "idle":
            if conn in live:
                live[conn] = (live[conn][0], bool(arg))
            snap = state.set_idle(conn, bool(arg))
        else:
            snap = state.grace_expired(now)
        if snap is not None:
            if announced:
                prev = announced[-1]
                assert (prev.status, prev.devices) != (snap.status, snap.devices)
            announced.append(snap)
        assert state.connection_count == len(live)
        if not state.in_grace:
            expected_status = (
                Status.OFFLINE
                if not live
                else Status.AWAY
                if all(idle for _, idle in live.values())
                else Status.ONLINE
            )
            assert state.published.status is expected_status
            assert state.published.devices == len({d for d, _ in live.values()})
        if not live:
            assert state.published.status is Status.OFFLINE or state.in_grace
        # offline is only ever announced with zero devices
        for s in announced:
            assert (s.status is Status.OFFLINE) == (s.devices == 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=5))
def test_flap_inside_grace_is_invisible(devices: list[str]) -> None:
    """Dropping every connection and reconnecting inside the grace period never
    announces a status change; the settled view equals the one before the drop."""
    state = PresenceState("u")
    for i, device in enumerate(devices):
        state.connect(i, device)
    before = state.published
    for i in range(len(devices)):
        assert state.disconnect(i, now_ms=10) is None or len(set(devices)) > 1
    for i, device in enumerate(devices):
        snap = state.connect(100 + i, device)
        assert snap is None or snap.status is Status.ONLINE
    assert state.grace_expired(now_ms=99) is None
    assert (state.published.status, state.published.devices) == (before.status, before.devices)
