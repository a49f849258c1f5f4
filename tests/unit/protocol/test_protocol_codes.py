"""Close codes, error codes and reason fitting (tether.transport.protocol.codes)."""

from __future__ import annotations

import pytest

from tether.transport.protocol.codes import (
    MAX_CLOSE_REASON_BYTES,
    DisconnectCode,
    ErrorCode,
    fit_reason,
    is_valid_close_code,
    reconnect_after,
)

SPEC_DISCONNECT = {
    1000: "NORMAL",
    3000: "SHUTDOWN",
    3001: "SLOW_CONSUMER",
    3002: "HEARTBEAT_TIMEOUT",
    3003: "INTERNAL_ERROR",
    3004: "RATE_LIMITED",
    3005: "HELLO_TIMEOUT",
    3006: "TOKEN_EXPIRED",
    3500: "BAD_FRAME",
    3501: "NOT_AUTHENTICATED",
    3502: "INVALID_TOKEN",
    3503: "MESSAGE_TOO_LARGE",
    3504: "KICKED",
    3505: "TOO_MANY_CONNECTIONS",
    3506: "PROTOCOL_VIOLATION",
}

SPEC_ERRORS = {
    100: ("BAD_REQUEST", False),
    101: ("UNKNOWN_TYPE", False),
    102: ("ALREADY_AUTHENTICATED", False),
    103: ("RATE_LIMITED", True),
    104: ("FORBIDDEN", False),
    105: ("NOT_FOUND", False),
    106: ("TOO_LARGE", False),
    107: ("INTERNAL", True),
    108: ("UNAVAILABLE", True),
    109: ("LIMIT_EXCEEDED", False),
    120: ("NOT_MEMBER", False),
    121: ("ROOM_NOT_FOUND", False),
    122: ("NOT_OWNER", False),
    123: ("MESSAGE_NOT_FOUND", False),
    124: ("NOT_AUTHOR", False),
    125: ("ROOM_FULL", False),
    126: ("NOT_PUBLIC", False),
    127: ("REJECTED", False),
    130: ("NOT_IN_CALL", False),
    131: ("BAD_SDP", False),
    132: ("MEDIA_UNAVAILABLE", True),
    133: ("CALL_FULL", False),
}


@pytest.mark.parametrize(("value", "name"), SPEC_DISCONNECT.items())
def test_disconnect_codes_match_the_spec(value: int, name: str) -> None:
    assert DisconnectCode(value).name == name


def test_rfc_codes_are_named_and_1001_is_not_used() -> None:
    assert {c.value for c in DisconnectCode if c < 3000} == {1000, 1002, 1003, 1009, 1011}
    assert not is_valid_close_code(1001)


@pytest.mark.parametrize("code", list(DisconnectCode))
def test_reconnect_follows_the_documented_ranges(code: DisconnectCode) -> None:
    expected = 3000 <= code < 3500 or code == 1011
    assert code.reconnect is expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1000, False),
        (1006, True),  # dropped without a close frame
        (1011, True),
        (1013, True),
        (2999, False),
        (3000, True),
        (3499, True),
        (3500, False),
        (3999, False),
        (4000, True),
        (4499, True),
        (4500, False),
        (4999, False),
    ],
)
def test_reconnect_after_unnamed_codes(code: int, expected: bool) -> None:
    assert reconnect_after(code) is expected


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        (1000, True),
        (1001, False),
        (1004, False),
        (1005, False),
        (1006, False),
        (1015, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
    ],
)
def test_is_valid_close_code(code: int, valid: bool) -> None:
    assert is_valid_close_code(code) is valid


@pytest.mark.parametrize(("value", "spec"), SPEC_ERRORS.items())
def test_error_codes_match_the_spec(value: int, spec: tuple[str, bool]) -> None:
    name, temporary = spec
    assert ErrorCode(value).name == name
    assert ErrorCode(value).temporary is temporary


def test_error_codes_stay_in_their_ranges() -> None:
    # 100-119 core, 120-199 rooms, messages and calls (130-139); 200-399 is
    # reserved for future core use; 400+ for plugins.
    assert all(100 <= code <= 199 for code in ErrorCode)
    assert set(ErrorCode) == set(SPEC_ERRORS)


def test_fit_reason_keeps_short_text() -> None:
    assert fit_reason("server restarting") == "server restarting"
    exact = "x" * MAX_CLOSE_REASON_BYTES
    assert fit_reason(exact) is exact


def test_fit_reason_cuts_on_a_character_boundary() -> None:
    text = "é" * 100  # 200 bytes of UTF-8
    fitted = fit_reason(text)
    assert len(fitted.encode()) <= MAX_CLOSE_REASON_BYTES
    assert fitted.endswith("…")
    assert fitted == "é" * 60 + "…"  # 120 bytes + 3 for the ellipsis


def test_fit_reason_drops_a_split_multibyte_character() -> None:
    fitted = fit_reason("a" + "€" * 50, 10)  # € is 3 bytes: a + €€ = 7 bytes, the third is cut
    assert fitted == "a€€…"
    assert len(fitted.encode()) == 10


def test_fit_reason_rejects_a_budget_too_small_for_the_ellipsis() -> None:
    with pytest.raises(ValueError, match=r"^Expected max_bytes >= 3, got 2$"):
        fit_reason("abc", 2)
