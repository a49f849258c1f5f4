"""``tether console``: a live, top-like terminal view of a server's actors.

It talks to the admin HTTP API (``/admin/api/...``, see ``docs/console.md``)
with the standard library's ``http.client`` in a worker thread, so nothing
here blocks trio. The rendering is pure (JSON in, lines out) and the command
line is parsed by a pure function, so both are tested without a terminal;
:func:`run_curses` is the thin interactive shell around them and ``--once``
prints one snapshot as text.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import trio

__all__ = [
    "COLUMNS",
    "SORT_COLUMNS",
    "AdminClient",
    "AdminError",
    "Command",
    "CommandError",
    "ConsoleState",
    "confirm",
    "execute",
    "fetch_snapshot",
    "format_age",
    "parse_command",
    "render_actors",
    "render_detail",
    "render_header",
    "render_snapshot",
    "render_trace",
    "resolve_token",
    "resolve_urn",
    "run_curses",
    "run_once",
]

DEFAULT_URL = "http://127.0.0.1:8740"
#: Columns the server can sort the actor list by (``s <column>``).
SORT_COLUMNS = ("mailbox", "handled", "rate", "age", "failures")
#: Table columns: (title, width, right-aligned).
COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("URN", 28, False),
    ("KIND", 10, False),
    ("KEY", 20, False),
    ("MBOX", 6, True),
    ("PEAK", 6, True),
    ("HANDLED", 9, True),
    ("RATE", 7, True),
    ("FAIL", 5, True),
    ("AGE", 7, True),
    ("STATE", 24, False),
)
_HTTP_TIMEOUT_S = 5.0
#: Actors fetched for the table (a terminal shows fewer anyway).
_TABLE_LIMIT = 200


class AdminError(Exception):
    """The admin API refused or failed a request (``status`` 0: no answer at all)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        # the API's code may be the status again: say it once
        shown = f"{status}" if code in ("", str(status)) else f"{status} {code}"
        super().__init__(f"{shown}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class AdminClient:
    """A client of the admin HTTP API at ``url`` (``http://host:port``), bearer ``token``.

    :meth:`request` blocks (``http.client``, one connection per request);
    :meth:`call` runs it in a worker thread for trio callers.
    """

    def __init__(self, url: str, token: str, *, timeout: float = _HTTP_TIMEOUT_S) -> None:
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Expected an http:// or https:// URL, got {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request and return its decoded JSON body.

        Raises:
            AdminError: a non-2xx answer (with the API's ``error``/``code``), a
                body that is not JSON, or no answer (status 0).
        """
        conn_type = (
            http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_type(self.host, self.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(0, "unreachable", f"{self.host}:{self.port}: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            raise AdminError(status, "bad_response", raw[:200].decode("utf-8", "replace")) from None
        if not 200 <= status < 300:
            error = data if isinstance(data, dict) else {}
            raise AdminError(
                status, str(error.get("code", status)), str(error.get("error", "request failed"))
            )
        return data

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """:meth:`request` in a worker thread (abandoned on cancellation)."""
        return await trio.to_thread.run_sync(
            self.request, method, path, body, abandon_on_cancel=True
        )


def actor_path(urn: str, action: str = "") -> str:
    """The API path of actor ``urn`` (percent-encoded: URNs may hold ``/``)."""
    path = f"/admin/api/actors/{quote(urn, safe=':@')}"
    return f"{path}/{action}" if action else path


def actors_query(sort: str, kind: str | None, limit: int = _TABLE_LIMIT) -> str:
    """The actor-list path for a sort column and an optional kind filter."""
    params: dict[str, str | int] = {"sort": sort, "limit": limit}
    if kind:
        params["kind"] = kind
    return f"/admin/api/actors?{urlencode(params)}"


# -- pure rendering -------------------------------------------------------------


def format_age(seconds: Any) -> str:
    """``42s``, ``7m03s``, ``5h12m``, ``3d04h``; ``-`` for a missing value."""
    if not isinstance(seconds, int | float):
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…" if width > 1 else text[:width]
    return text.rjust(width) if right else text.ljust(width)


def short_urn(urn: str, width: int = COLUMNS[0][1]) -> str:
    """``urn`` cut to ``width`` keeping its end (the distinctive part)."""
    return urn if len(urn) <= width else "…" + urn[-(width - 1) :]


def render_header(summary: Mapping[str, Any], *, sort: str, kind: str | None) -> list[str]:
    """The header lines for a ``/admin/api/summary`` answer."""
    kinds = summary.get("kinds") or {}
    kinds_text = "  ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "no actors"
    state = "DRAINING" if summary.get("draining") else "serving"
    return [
        f"{summary.get('server', '?')}  up {format_age(summary.get('uptime_s'))}  {state}",
        f"connections {_num(summary.get('connections'))}  "
        f"users online {_num(summary.get('users_online'))}  "
        f"rooms active {_num(summary.get('rooms_active'))}",
        f"actors: {kinds_text}",
        f"sort: {sort}  filter: {kind or 'all'}",
    ]


def _row(actor: Mapping[str, Any]) -> list[str]:
    return [
        short_urn(str(actor.get("urn", ""))),
        str(actor.get("kind", "")),
        str(actor.get("key", "")),
        _num(actor.get("mailbox")),
        _num(actor.get("mailbox_peak")),
        _num(actor.get("handled")),
        _num(actor.get("rate")),
        _num(actor.get("failures")),
        format_age(actor.get("age_s")),
        str(actor.get("state", "")),
    ]


def render_actors(actors: Sequence[Mapping[str, Any]], *, width: int = 200) -> list[str]:
    """The actor table: a title line, then one line per actor, each cut to ``width``."""
    lines = [" ".join(_fit(title, w, right) for title, w, right in COLUMNS)]
    for actor in actors:
        cells = _row(actor)
        lines.append(
            " ".join(
                _fit(cell, w, right) for cell, (_t, w, right) in zip(cells, COLUMNS, strict=True)
            )
        )
    return [line[:width].rstrip() for line in lines]


def render_snapshot(
    summary: Mapping[str, Any],
    actors: Mapping[str, Any],
    *,
    sort: str = "mailbox",
    kind: str | None = None,
    width: int = 200,
) -> list[str]:
    """Header, a blank line and the actor table (what ``--once`` prints)."""
    listed = list(actors.get("actors") or [])
    total = actors.get("total", len(listed))
    lines = render_header(summary, sort=sort, kind=kind)
    lines.append(f"showing {len(listed)} of {total} actors")
    lines.append("")
    lines.extend(render_actors(listed, width=width))
    return [line[:width] for line in lines]


def _kv_lines(data: Any, indent: int = 0) -> list[str]:
    pad = "  " * indent
    if isinstance(data, Mapping):
        out: list[str] = []
        for key, value in data.items():
            if isinstance(value, Mapping | list) and value:
                out.append(f"{pad}{key}:")
                out.extend(_kv_lines(value, indent + 1))
            else:
                out.append(f"{pad}{key}: {_scalar(value)}")
        return out
    if isinstance(data, list):
        out = []
        for item in data:
            if isinstance(item, Mapping | list) and item:
                out.append(f"{pad}-")
                out.extend(_kv_lines(item, indent + 1))
            else:
                out.append(f"{pad}- {_scalar(item)}")
        return out
    return [f"{pad}{_scalar(data)}"]


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping | list):
        return "{}" if isinstance(value, Mapping) else "[]"
    if value is None:
        return "-"
    return _num(value)


def render_detail(payload: Mapping[str, Any]) -> list[str]:
    """The detail view of a ``GET /admin/api/actors/<urn>`` answer."""
    actor = payload.get("actor") or {}
    lines = [f"actor {actor.get('urn', '?')}  ({actor.get('kind', '?')} {actor.get('key', '')})"]
    lines.extend(_kv_lines({k: v for k, v in actor.items() if k != "urn"}, 1))
    waiting = payload.get("waiting_on")
    if waiting:
        lines.append(
            f"waiting on: {waiting.get('message', '?')} for "
            f"{_num(waiting.get('since_s'))}s, awaiting {waiting.get('awaiting', '?')}"
        )
    else:
        lines.append("waiting on: nothing")
    lines.append("detail:")
    lines.extend(_kv_lines(payload.get("detail") or {}, 1))
    return lines


def render_trace(urn: str, payload: Mapping[str, Any]) -> list[str]:
    """The trace view of a ``GET /admin/api/actors/<urn>/trace`` answer."""
    state = (
        f"tracing, {_num(payload.get('until_s'))}s left" if payload.get("tracing") else "stopped"
    )
    messages = list(payload.get("messages") or [])
    lines = [f"trace {urn}: {state}, {len(messages)} messages", ""]
    lines.append(f"{'TS':>14} {'MS':>8}  {'TYPE':<24} REPR")
    for msg in messages:
        ts = msg.get("ts")
        ts_text = (
            time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "?"
        )
        if isinstance(ts, int | float):
            ts_text += f".{int(ts * 1000) % 1000:03d}"
        lines.append(
            f"{ts_text:>14} {_num(msg.get('duration_ms')):>8}  "
            f"{msg.get('type', '')!s:<24} {msg.get('repr', '')}"
        )
    return lines


# -- commands -------------------------------------------------------------------


class CommandError(ValueError):
    """A command line that does not parse (the message says how to write it)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed console command: ``name`` (canonical) and its arguments."""

    name: str
    args: tuple[str, ...] = ()


#: name → (aliases, minimum args, maximum args or None, usage).
_COMMANDS: dict[str, tuple[tuple[str, ...], int, int | None, str]] = {
    "detail": (("d",), 1, 1, "d <urn|key>"),
    "trace": (("t",), 1, 2, "t <urn|key> [seconds]"),
    "disconnect": (("k",), 1, 1, "k <conn_id>"),
    "stop": ((), 1, 1, "stop <urn>"),
    "restart": ((), 1, 1, "restart <urn>"),
    "drain": ((), 0, 0, "drain"),
    "post": ((), 2, None, "post <room> <text>"),
    "sort": (("s",), 1, 1, f"s <{'|'.join(SORT_COLUMNS)}>"),
    "filter": (("f",), 0, 1, "f [kind]  (no kind: all)"),
    "back": (("b",), 0, 0, "b  (back to the table)"),
    "help": (("h", "?"), 0, 0, "h"),
    "quit": (("q",), 0, 0, "q"),
}
_ALIASES = {alias: name for name, (aliases, *_r) in _COMMANDS.items() for alias in (name, *aliases)}
HELP_LINES = [usage for (_a, _lo, _hi, usage) in _COMMANDS.values()]


def parse_command(line: str) -> Command | None:
    """Parse one console command line; ``None`` for a blank line.

    ``post`` keeps the rest of the line as the text, verbatim; other arguments
    are split shell-style (quotes allowed).

    Raises:
        CommandError: unknown command, wrong arguments (message: the usage).
    """
    stripped = line.strip()
    if not stripped:
        return None
    head, _, rest = stripped.partition(" ")
    name = _ALIASES.get(head)
    if name is None:
        raise CommandError(f"unknown command {head!r}; h for help")
    _aliases, low, high, usage = _COMMANDS[name]
    if name == "post":
        room, _, text = rest.strip().partition(" ")
        args: tuple[str, ...] = (room, text.strip()) if room and text.strip() else ()
    else:
        try:
            args = tuple(shlex.split(rest))
        except ValueError as exc:
            raise CommandError(f"{exc}; usage: {usage}") from None
    if len(args) < low or (high is not None and len(args) > high):
        raise CommandError(f"usage: {usage}")
    if name == "sort" and args[0] not in SORT_COLUMNS:
        raise CommandError(f"sort by one of {', '.join(SORT_COLUMNS)}")
    if name == "trace" and len(args) == 2:
        try:
            seconds = float(args[1])
        except ValueError:
            raise CommandError(f"seconds must be a number; usage: {usage}") from None
        if seconds <= 0:
            raise CommandError("seconds must be positive")
    return Command(name, args)


def resolve_urn(target: str, actors: Sequence[Mapping[str, Any]]) -> str:
    """The URN meant by ``target``: an actor's URN, or the key of exactly one listed actor.

    Anything else is returned unchanged (the server then says whether it exists).
    """
    if any(a.get("urn") == target for a in actors):
        return target
    matches = [str(a["urn"]) for a in actors if a.get("key") == target and "urn" in a]
    return matches[0] if len(matches) == 1 else target


@dataclass
class ConsoleState:
    """What the console shows: sort, filter, view (table, detail or trace) and a status line."""

    sort: str = "mailbox"
    kind: str | None = None
    view: str = "table"
    target: str | None = None
    status: str = ""
    confirm: str | None = None
    actors: list[dict[str, Any]] = field(default_factory=list)
    running: bool = True


async def execute(command: Command, client: AdminClient, state: ConsoleState) -> None:
    """Carry out ``command``: change ``state`` and/or call the API; outcome in ``state.status``.

    ``drain`` only arms a confirmation (``state.confirm``); :func:`confirm`
    carries it out. API failures land in ``state.status``, they do not raise.
    """
    name, args = command.name, command.args
    try:
        if name == "quit":
            state.running = False
        elif name == "help":
            state.status = " | ".join(HELP_LINES)
        elif name == "back":
            state.view, state.target, state.status = "table", None, ""
        elif name == "sort":
            state.sort = args[0]
            state.status = f"sorted by {args[0]}"
        elif name == "filter":
            state.kind = args[0] if args else None
            state.status = f"showing {state.kind or 'all kinds'}"
        elif name == "detail":
            state.view, state.target = "detail", resolve_urn(args[0], state.actors)
            state.status = ""
        elif name == "trace":
            urn = resolve_urn(args[0], state.actors)
            seconds = float(args[1]) if len(args) > 1 else 10.0
            await client.call("POST", actor_path(urn, "trace"), {"seconds": seconds})
            state.view, state.target = "trace", urn
            state.status = f"tracing {urn} for {seconds:g}s"
        elif name == "disconnect":
            await client.call(
                "POST", f"/admin/api/connections/{quote(args[0], safe='')}/disconnect"
            )
            state.status = f"disconnected {args[0]}"
        elif name in ("stop", "restart"):
            urn = resolve_urn(args[0], state.actors)
            await client.call("POST", actor_path(urn, name))
            state.status = f"{name} {urn}: done"
        elif name == "drain":
            state.confirm = "drain"
            state.status = "drain the server (stop accepting, close clients)? y/N"
        elif name == "post":
            room, text = args
            await client.call(
                "POST", f"/admin/api/rooms/{quote(room, safe='')}/message", {"body": text}
            )
            state.status = f"posted to {room}"
    except AdminError as exc:
        state.status = f"{name} failed: {exc}"


async def confirm(answer: str, client: AdminClient, state: ConsoleState) -> None:
    """Answer a pending confirmation: ``y`` carries it out, anything else cancels."""
    pending, state.confirm = state.confirm, None
    if pending != "drain":
        return
    if answer.strip().lower() not in ("y", "yes"):
        state.status = "drain cancelled"
        return
    try:
        await client.call("POST", "/admin/api/drain")
        state.status = "draining"
    except AdminError as exc:
        state.status = f"drain failed: {exc}"


async def fetch_snapshot(
    client: AdminClient, *, sort: str = "mailbox", kind: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, actor list)`` from the API (both requests concurrently).

    Raises:
        AdminError: a request failed (the summary's error when both did).
    """
    results: dict[str, Any] = {}
    errors: dict[str, AdminError] = {}

    async def get(key: str, path: str) -> None:
        try:
            results[key] = await client.call("GET", path)
        except AdminError as exc:  # one plain error for callers, not a group
            errors[key] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, "summary", "/admin/api/summary")
        nursery.start_soon(get, "actors", actors_query(sort, kind))
    for key in ("summary", "actors"):  # a stable choice when both failed
        if key in errors:
            raise errors[key]
    return results["summary"], results["actors"]


async def view_lines(client: AdminClient, state: ConsoleState, width: int) -> list[str]:
    """Fetch what the current view needs and render it (errors become a line)."""
    try:
        if state.view == "detail" and state.target:
            return render_detail(await client.call("GET", actor_path(state.target)))
        if state.view == "trace" and state.target:
            return render_trace(
                state.target, await client.call("GET", actor_path(state.target, "trace"))
            )
        summary, actors = await fetch_snapshot(client, sort=state.sort, kind=state.kind)
    except AdminError as exc:
        return [f"error: {exc}"]
    state.actors = list(actors.get("actors") or [])
    return render_snapshot(summary, actors, sort=state.sort, kind=state.kind, width=width)


# -- entry points ---------------------------------------------------------------


def resolve_token(
    token: str | None, token_file: Path | None, env: Mapping[str, str] | None = None
) -> str | None:
    """The admin token: ``--token``, else ``--token-file``'s first line, else the environment.

    The environment variable is ``TETHER_ADMIN_TOKEN``; ``None`` when none is set.
    """
    if token:
        return token.strip()
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    value = (env if env is not None else os.environ).get("TETHER_ADMIN_TOKEN", "").strip()
    return value or None


async def run_once(
    client: AdminClient, *, sort: str = "mailbox", kind: str | None = None, width: int = 200
) -> list[str]:
    """One snapshot as text lines (``tether console --once``).

    Raises:
        AdminError: the server refused or could not be reached.
    """
    summary, actors = await fetch_snapshot(client, sort=sort, kind=kind)
    return render_snapshot(summary, actors, sort=sort, kind=kind, width=width)


def run_curses(client: AdminClient, state: ConsoleState, refresh_s: float = 1.0) -> None:
    """The interactive console until ``q`` (blocks; owns the terminal)."""
    import curses  # noqa: PLC0415 - not needed by --once or the tests

    def main(stdscr: Any) -> None:
        curses.curs_set(1)
        stdscr.nodelay(True)
        trio.run(_loop, stdscr, client, state, refresh_s, curses.KEY_BACKSPACE)

    curses.wrapper(main)


async def _loop(
    stdscr: Any, client: AdminClient, state: ConsoleState, refresh_s: float, key_backspace: int
) -> None:
    buffer = ""
    lines: list[str] = []
    next_fetch = 0.0
    while state.running:
        width = stdscr.getmaxyx()[1]
        if trio.current_time() >= next_fetch:
            lines = await view_lines(client, state, max(20, width - 1))
            next_fetch = trio.current_time() + refresh_s
            _draw(stdscr, lines, state, buffer)
        key = stdscr.getch()
        if key == -1:
            await trio.sleep(0.05)  # a UI poll, not synchronization
            continue
        if key in (10, 13):
            line, buffer = buffer, ""
            if state.confirm:
                await confirm(line, client, state)
            else:
                try:
                    command = parse_command(line)
                except CommandError as exc:
                    state.status = str(exc)
                else:
                    if command is None:
                        state.view, state.target = "table", None
                    else:
                        await execute(command, client, state)
            next_fetch = 0.0
        elif key == 27:  # Esc: clear the line, back to the table
            buffer, state.confirm = "", None
            state.view, state.target = "table", None
            next_fetch = 0.0
        elif key in (key_backspace, 127, 8):
            buffer = buffer[:-1]
        elif key == ord("q") and not buffer and not state.confirm:
            state.running = False
        elif 32 <= key < 127:
            buffer += chr(key)
        _draw(stdscr, lines, state, buffer)


def _draw(stdscr: Any, lines: list[str], state: ConsoleState, buffer: str) -> None:
    height, width = stdscr.getmaxyx()
    stdscr.erase()
    body = lines[: max(0, height - 2)]
    for y, line in enumerate(body):
        _put(stdscr, y, line, width)
    _put(stdscr, height - 2, state.status or "h: help  q: quit  d <urn|key>  s <column>", width)
    _put(stdscr, height - 1, f"> {buffer}", width)
    stdscr.move(height - 1, min(width - 1, 2 + len(buffer)))
    stdscr.refresh()


def _put(stdscr: Any, y: int, text: str, width: int) -> None:
    if y < 0:
        return
    # curses raises on writes that touch the last cell or a tiny window; never fatal here
    with contextlib.suppress(Exception):
        stdscr.addnstr(y, 0, text, max(0, width - 1))


def main(
    url: str,
    token: str,
    *,
    once: bool,
    sort: str,
    kind: str | None,
    write: Callable[[str], object] = print,
) -> int:
    """``tether console``: 0 on success, 1 when the API refused or is unreachable."""
    client = AdminClient(url, token)
    if once:
        try:
            lines = trio.run(lambda: run_once(client, sort=sort, kind=kind))
        except AdminError as exc:
            print(f"tether console: {exc}", file=sys.stderr)
            return 1
        for line in lines:
            write(line)
        return 0
    run_curses(client, ConsoleState(sort=sort, kind=kind))
    return 0
