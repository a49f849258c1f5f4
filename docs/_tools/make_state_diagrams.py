"""Render the connection state tables of ``tether.transport.protocol.states``.

The output (a Mermaid state diagram and two tables) lives in ``docs/protocol.md``
between the marker comments below; ``tests/unit/protocol`` checks that it is
current, so the documentation cannot drift from the code.

Usage (from the repository root)::

    python docs/_tools/make_state_diagrams.py           # print the rendering
    python docs/_tools/make_state_diagrams.py --write   # update docs/protocol.md
    python docs/_tools/make_state_diagrams.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from tether.transport.protocol.events import CLIENT_EVENT_TYPES, SERVER_EVENT_TYPES  # noqa: E402
from tether.transport.protocol.states import (  # noqa: E402
    CLIENT_RULES,
    CLOSE,
    HELLO_ERROR,
    OTHER,
    SERVER_RULES,
    UNKNOWN,
    Accept,
    ClientRule,
    Close,
    ConnectionState,
    Refuse,
    client_rule,
)

DOC_PATH = REPO_ROOT / "docs" / "protocol.md"
BEGIN_MARKER = "<!-- BEGIN GENERATED state-diagrams: docs/_tools/make_state_diagrams.py --write -->"
END_MARKER = "<!-- END GENERATED state-diagrams -->"

_KEY_LABELS = {
    OTHER: "any other frame",
    UNKNOWN: "unknown frame type",
    CLOSE: "close (Disconnect)",
}


def _label(key: str) -> str:
    return _KEY_LABELS.get(key, key)


def _client_edges() -> list[tuple[ConnectionState, ConnectionState, str]]:
    """Client-caused state changes, one edge per (source, outcome), keys merged."""
    edges: list[tuple[ConnectionState, ConnectionState, str]] = []
    for state, row in CLIENT_RULES.items():
        groups: dict[tuple[ConnectionState, str], list[str]] = {}
        for key, rule in row.items():
            if isinstance(rule, Accept) and rule.next_state is not state:
                groups.setdefault((rule.next_state, ""), []).append(key)
            elif isinstance(rule, Close):
                groups.setdefault(
                    (ConnectionState.CLOSED, f" - close {int(rule.code)}"), []
                ).append(key)
        for (target, suffix), keys in groups.items():
            names = (
                ["any other frame"]
                if set(keys) == {OTHER, UNKNOWN}
                else [_label(key) for key in keys]
            )
            edges.append((state, target, f"client {' / '.join(names)}{suffix}"))
    return edges


def _server_edges() -> list[tuple[ConnectionState, ConnectionState, str]]:
    edges = []
    for state, row in SERVER_RULES.items():
        for key, target in row.items():
            if target is not state:
                edges.append((state, target, f"server {_label(key)}"))
    return edges


def render_mermaid() -> str:
    """Return the Mermaid ``stateDiagram-v2`` of every state change."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {ConnectionState.AWAITING_HELLO}"]
    lines += [f"    {src} --> {dst}: {label}" for src, dst, label in _client_edges()]
    lines += [f"    {src} --> {dst}: {label}" for src, dst, label in _server_edges()]
    lines += [f"    {ConnectionState.CLOSED} --> [*]", "```"]
    return "\n".join(lines)


def _client_cell(state: ConnectionState, rule: ClientRule) -> str:
    if isinstance(rule, Accept):
        return "accepted" if rule.next_state is state else f"accepted, → {rule.next_state}"
    if isinstance(rule, Close):
        return f"close {int(rule.code)} {rule.code.name}"
    if isinstance(rule, Refuse):
        return f"error {int(rule.code)} {rule.code.name}"
    return "ignored"


def render_client_table() -> str:
    """Return the Markdown table: client frame type x state → outcome."""
    states = list(ConnectionState)
    header = "| client frame | " + " | ".join(str(s) for s in states) + " |"
    lines = [header, "|" + "---|" * (len(states) + 1)]
    frame_types = [*CLIENT_EVENT_TYPES, UNKNOWN]
    for frame_type in frame_types:
        # An unknown type is looked up under a name no frame type can have.
        lookup = "\x00unknown" if frame_type == UNKNOWN else frame_type
        cells = [_client_cell(s, client_rule(s, lookup)) for s in states]
        name = "*unknown type*" if frame_type == UNKNOWN else f"`{frame_type}`"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_server_table() -> str:
    """Return the Markdown table: server event x state → allowed / next state."""
    states = list(ConnectionState)
    # Frame types in registration order, the hello-answering error after
    # "error", the close last; then anything else a row mentions.
    keys: list[str] = []
    for frame_type in SERVER_EVENT_TYPES:
        keys += [frame_type, HELLO_ERROR] if frame_type == "error" else [frame_type]
    keys.append(CLOSE)
    for row in SERVER_RULES.values():
        keys += [key for key in row if key not in keys]
    header = "| server sends | " + " | ".join(str(s) for s in states) + " |"
    lines = [header, "|" + "---|" * (len(states) + 1)]
    for key in keys:
        cells = []
        for state in states:
            target = SERVER_RULES[state].get(key)
            if target is None:
                cells.append("—")
            else:
                cells.append("allowed" if target is state else f"allowed, → {target}")
        name = "`error` answering the pending `hello`" if key == HELLO_ERROR else _label(key)
        if key not in (HELLO_ERROR, CLOSE):
            name = f"`{key}`"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render() -> str:
    """Return everything that goes between the markers (markers excluded)."""
    return "\n\n".join(
        [
            render_mermaid(),
            "What a client frame does in each state:",
            render_client_table(),
            "What the server may send in each state (— means never):",
            render_server_table(),
        ]
    )


def splice(document: str, rendering: str) -> str:
    """Return ``document`` with the text between the markers replaced by ``rendering``.

    Raises:
        ValueError: the markers are missing or out of order.
    """
    start = document.find(BEGIN_MARKER)
    end = document.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"Expected {BEGIN_MARKER!r} followed by {END_MARKER!r} in the document")
    head = document[: start + len(BEGIN_MARKER)]
    return f"{head}\n{rendering}\n{document[end:]}"


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the rendering; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update docs/protocol.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if docs/protocol.md is stale")
    args = parser.parse_args(argv)
    rendering = render()
    if not (args.write or args.check):
        print(rendering)
        return 0
    document = DOC_PATH.read_text(encoding="utf-8")
    updated = splice(document, rendering)
    if args.check:
        if updated != document:
            print(f"{DOC_PATH} is stale: run {Path(__file__).name} --write", file=sys.stderr)
            return 1
        return 0
    DOC_PATH.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
