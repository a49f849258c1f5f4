"""docs/protocol.md stays true: generated state tables, real examples, every code listed."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

from tether.transport.protocol import (
    CLIENT_EVENT_TYPES,
    SERVER_EVENT_TYPES,
    DisconnectCode,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Limits,
    Message,
    MsgSend,
    Ping,
    Presence,
    PresenceSubscribe,
    Reply,
    decode,
    decode_server_frame,
    encode,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DOC = REPO_ROOT / "docs" / "protocol.md"
TOOL = REPO_ROOT / "docs" / "_tools" / "make_state_diagrams.py"

_SUBSCRIBE = PresenceSubscribe(ref=2, users=("bob",))
_SEND = MsgSend(ref=4, room="q7Xv2LmN9cRt4BzA", cid="b-0001", body={"text": "Train at 9?"})
EXAMPLES: dict[str, Frame] = {
    "hello": Hello(ref=1, token="abc.def.ghi", device="laptop-7f3a", client="tether-js/0.1"),
    "welcome": Hello(ref=1, token="x").welcome(
        session="c0ffee42",
        user="alice",
        name="Alice",
        device="laptop-7f3a",
        heartbeat_ms=25_000,
        timeout_ms=60_000,
        server="tether/0.1.0",
        limits=Limits().advertised(max_frames_per_s=50),
    ),
    "presence.subscribe": _SUBSCRIBE,
    "reply": _SUBSCRIBE.reply(
        {"users": [Presence(user="bob", status="online", devices=2, last_seen=None)]}  # type: ignore[arg-type]
    ),
    "presence": Presence(user="bob", status="away", devices=2, last_seen=None),  # type: ignore[arg-type]
    "ping": Ping(n=42),
    "msg.send": _SEND,
    "msg.send.reply": _SEND.reply(seq=1, ts=1_767_258_060_000, dup=False),
    "msg": Message(
        room="q7Xv2LmN9cRt4BzA",
        seq=1,
        cid="b-0001",
        sender="bob",
        body={"text": "Train at 9?"},
        ts=1_767_258_060_000,
    ),
    "error": Error(ref=3, code=101, reason="Unknown frame type 'poll.vote'", temporary=False),
}

_EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w.]+) -->\n```text\n(?P<body>.*?)\n```", re.S)
_HEX = re.compile(r"^\s*((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s{2,}|$)")


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_state_diagrams", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_state_diagrams_are_current(doc: str) -> None:
    tool = load_tool()
    assert tool.splice(doc, tool.render()) == doc, (
        "docs/protocol.md is stale: run python docs/_tools/make_state_diagrams.py --write"
    )


def test_the_tool_check_mode_agrees() -> None:
    assert load_tool().main(["--check"]) == 0


def test_rendering_covers_every_state_and_frame_type() -> None:
    rendering = load_tool().render()
    assert "stateDiagram-v2" in rendering
    for name in [*CLIENT_EVENT_TYPES, *SERVER_EVENT_TYPES]:
        assert f"`{name}`" in rendering


def test_splice_requires_the_markers() -> None:
    with pytest.raises(ValueError, match=r"^Expected '<!-- BEGIN GENERATED"):
        load_tool().splice("no markers here", "x")


def example_bytes(body: str) -> bytes:
    hex_parts = []
    for line in body.splitlines():
        match = _HEX.match(line)
        assert match, f"not an annotated hex line: {line!r}"
        hex_parts.append(match.group(1))
    return bytes.fromhex(" ".join(hex_parts))


def test_annotated_examples_are_real_frames(doc: str) -> None:
    found = {m["name"]: example_bytes(m["body"]) for m in _EXAMPLE.finditer(doc)}
    assert sorted(found) == sorted(EXAMPLES)
    for name, payload in found.items():
        assert payload == encode(EXAMPLES[name]), name
        frame = EXAMPLES[name]
        if frame.TYPE in CLIENT_EVENT_TYPES:
            assert decode(payload) == frame
        if frame.TYPE in SERVER_EVENT_TYPES:
            assert decode_server_frame(payload) == frame


def test_pong_bytes_in_the_text_are_real(doc: str) -> None:
    assert "`82 a1 74 a4 70 6f 6e 67 a1 6e 2a`" in doc
    assert encode(Ping(n=42).response()).hex(" ") == "82 a1 74 a4 70 6f 6e 67 a1 6e 2a"


@pytest.mark.parametrize("code", list(DisconnectCode), ids=lambda c: c.name)
def test_every_close_code_is_documented(doc: str, code: DisconnectCode) -> None:
    assert re.search(rf"^\| {int(code)} \|", doc, re.M), f"close code {int(code)} missing"


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_is_documented(doc: str, code: ErrorCode) -> None:
    temporary = "yes" if code.temporary else "no"
    assert f"| {int(code)} | `{code.name}` | {temporary} |" in doc


@pytest.mark.parametrize("frame_type", sorted({*CLIENT_EVENT_TYPES, *SERVER_EVENT_TYPES}))
def test_every_frame_type_has_a_section(doc: str, frame_type: str) -> None:
    headings = re.findall(r"^### (.+)$", doc, re.M)
    assert any(f"`{frame_type}`" in heading for heading in headings)


_EXCHANGE = re.compile(r"<!-- exchange: (?P<name>[\w.]+) -->\n```text\n(?P<body>.*?)\n```", re.S)
_EXCHANGE_LINE = re.compile(r"^(?P<who>[\w/]+) +(?P<arrow>→|←) (?P<frame>\{.*\})$")


def test_example_conversation_is_made_of_valid_frames(doc: str) -> None:
    """Each frame decodes, renders back to itself, and each reply is its request's helper's."""
    (exchange,) = _EXCHANGE.finditer(doc)
    pending: dict[tuple[str, int], Any] = {}
    frames = 0
    for line in exchange["body"].splitlines():
        if not line or line.startswith("#"):
            continue
        match = _EXCHANGE_LINE.match(line)
        assert match, f"not a frame line: {line!r}"
        wire = json.loads(match["frame"])
        payload = msgpack.packb(wire, use_bin_type=True)
        if match["arrow"] == "→":
            event = decode(payload)
            ref = getattr(event, "ref", None)
            if ref is not None:
                pending[match["who"], ref] = event
        else:
            event = decode_server_frame(payload)
            assert event is not None, line
            ref = getattr(event, "ref", None)
            if ref is not None:
                request = pending.pop((match["who"], ref))
                if isinstance(event, Reply):
                    if isinstance(request, PresenceSubscribe):
                        assert request.reply(event.data) == event
                    else:
                        assert request.reply(**event.data) == event
        # The event renders what the line says (plus defaulted fields, e.g. limit).
        rendered = event.to_wire()
        assert {**rendered, **wire} == rendered, line
        frames += 1
    assert frames > 40
    # The one request left unanswered is the one lost with the phone's connection.
    assert [(who, event.TYPE) for (who, _), event in pending.items()] == [
        ("alice/phone", "msg.send")
    ]
