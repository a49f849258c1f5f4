"""End to end: plugins in a real server, over real WebSockets and real SQLite.

The test plugins are defined here and loaded from the configuration as
``module:Class`` paths, as an operator would; what they record goes to trio
channels handed over in their settings.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tether.actors import Future
from tether.app import Server
from tether.plugins import (
    PLUGIN_API_VERSION,
    Allow,
    Intercept,
    MembershipChanged,
    MessageDeleted,
    MessageEdited,
    MessagePosted,
    Modify,
    Plugin,
    PluginError,
    PostError,
    PresenceChanged,
    Reject,
    ThreadPlugin,
    Verdict,
)
from tether.testing import make_config, running_server
from tether.testing.raw import RawClient, clients, make_room

HERE = __name__
MODERATION = "tether.plugins.examples.moderation:ModerationFilter"
ECHO = "tether.plugins.examples.echo_bot:EchoBot"


class Recorder(Plugin):
    """Sends every event it gets to the ``sink`` channel of its settings."""

    name = "recorder"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def _record(self, event: Any) -> None:
        self.settings["sink"].send_nowait(event)

    on_message = on_edit = on_delete = on_membership = on_presence = _record


class Slow(Plugin):
    """Takes 30 s over a message whose body is ``"slow"`` (blocking its own mailbox)."""

    name = "slow"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    async def intercept(self, message: Intercept) -> Verdict:
        if message.body == "slow":
            await trio.sleep(30)
            return Reject("too late anyway")
        return Allow()


class Gate(Plugin):
    """Holds a ``"held"`` message until the ``gate`` event of its settings is set.

    It answers with a future, so its mailbox stays free meanwhile.
    """

    name = "gate"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def intercept(self, message: Intercept) -> Verdict | Future[Verdict]:
        if message.body != "held":
            return Allow()
        answer: Future[Verdict] = Future()

        async def later() -> None:
            await self.settings["gate"].wait()
            answer.set(Modify("held, then let through"))

        self.system.nursery.start_soon(later)
        return answer


class Flaky(Plugin):
    """Allows the first message it sees, rejects every later one."""

    name = "flaky"
    version = "0.1"
    api_version = PLUGIN_API_VERSION
    seen = 0

    def intercept(self, message: Intercept) -> Verdict:
        self.seen += 1
        return Allow() if self.seen == 1 else Reject("changed my mind")


class Shout(Plugin):
    """Upper-cases str bodies; answers nonsense for some of them."""

    name = "shout"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def intercept(self, message: Intercept) -> Any:
        match message.body:
            case "raise":
                raise RuntimeError("a bug in the plugin")
            case "nil":
                return Modify(None)  # not a valid body
            case "what":
                return "yes"  # not a verdict
            case str(text):
                return Modify(text.upper())
        return None  # the same as Allow()


class Crashy(Plugin):
    """Fails on a ``"boom"`` message; reports its starts and messages to ``sink``."""

    name = "crashy"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def on_start(self) -> None:
        self.settings["sink"].send_nowait(("started", trio.current_time()))

    def on_message(self, event: MessagePosted) -> None:
        self.settings["sink"].send_nowait((event.body, trio.current_time()))
        if event.body == "boom":
            raise RuntimeError("boom")


class Clogged(Plugin):
    """A tiny mailbox and a handler that waits for ``gate``: its events overflow."""

    name = "clogged"
    version = "0.1"
    api_version = PLUGIN_API_VERSION
    mailbox_size = 2

    async def on_message(self, event: MessagePosted) -> None:
        await self.settings["gate"].wait()


class Upper(ThreadPlugin):
    """Blocking code in a thread: upper-cases every str message (after a sleep)."""

    name = "upper"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def intercept(self, message: Intercept) -> Verdict:
        time.sleep(0.01)  # a blocking call: fine on this plugin's own thread
        return Modify(message.body.upper()) if isinstance(message.body, str) else Allow()


class Watcher(ThreadPlugin):
    """Blocks its thread on ``gate`` (a threading.Event), then posts what it saw."""

    name = "watcher"
    version = "0.1"
    api_version = PLUGIN_API_VERSION

    def on_message(self, event: MessagePosted) -> None:
        if event.by_plugin:
            return
        assert self.settings["gate"].wait(timeout=20)
        posted = self.context.post(event.room, f"seen {event.body}").get(timeout=10)
        assert posted.seq > event.seq


class FuturePlugin(Plugin):
    """Written for a plugin API this server does not provide."""

    name = "future"
    version = "9.0"
    api_version = 99


def _config(tmp_path: Path, *plugins: str, **overrides: Any) -> Any:
    return make_config(tmp_path, plugins=plugins, **overrides)


async def _public_room(owner: RawClient, *others: RawClient) -> str:
    room: str = (await owner.ok("room.create", name="R", kind="public"))["room"]["id"]
    for client in others:
        await client.ok("room.join", room=room)
    return room


# -- events -------------------------------------------------------------------------


async def test_a_plugin_from_the_configuration_receives_server_events(tmp_path: Path) -> None:
    sink, events = trio.open_memory_channel[Any](1000)
    config = _config(tmp_path, f"{HERE}:Recorder", plugin_settings={"recorder": {"sink": sink}})
    with trio.fail_after(20):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, _bob),
        ):
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            assert server.ctx.plugins.names == ["recorder"]
            room = await make_room(alice, "bob")
            sent = await alice.ok("msg.send", room=room, cid="c1", body="hi")
            await alice.ok("msg.edit", room=room, seq=sent["seq"], body="hi!")
            await alice.ok("msg.delete", room=room, seq=sent["seq"])
            await alice.ok("room.remove", room=room, user="bob")
            wanted: list[Any] = [
                MembershipChanged(room, "alice", "joined", "alice"),
                MembershipChanged(room, "bob", "invited", "alice"),
                MessagePosted(room, 1, "c1", "alice", "hi", sent["ts"]),
                MessageEdited(room, 1, "alice", "hi!", 0),  # edited_at: checked below
                MessageDeleted(room, 1, "alice"),
                MembershipChanged(room, "bob", "removed", "alice"),
            ]
            seen: list[Any] = []
            presence: list[PresenceChanged] = []
            while len(seen) < len(wanted):
                event = await events.receive()
                if isinstance(event, PresenceChanged):
                    presence.append(event)
                elif isinstance(event, MessageEdited):
                    assert event.edited_at >= sent["ts"]
                    seen.append(dataclasses.replace(event, edited_at=0))
                else:
                    seen.append(event)
            assert seen == wanted
            # Both connected before the room existed; their presence is seen too.
            while len(presence) < 2:
                event = await events.receive()
                if isinstance(event, PresenceChanged):
                    presence.append(event)
            assert {(p.user, p.status, p.devices) for p in presence} == {
                ("alice", "online", 1),
                ("bob", "online", 1),
            }


# -- interception -----------------------------------------------------------------------


async def test_moderation_rejects_a_message_with_a_listed_word(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        MODERATION,
        plugin_settings={"moderation": {"words": ["darn"], "reason": "mind your language"}},
    )
    with trio.fail_after(20):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = await make_room(alice, "bob")
            error = await alice.fails("msg.send", 127, room=room, cid="c1", body="well DARN it")
            assert (error["reason"], error["temporary"]) == ("mind your language", False)
            await alice.fails("msg.send", 127, room=room, cid="c2", body={"text": "darn!"})
            await bob.nothing("msg")
            assert (await bob.ok("history", room=room))["messages"] == []
            # Whole words only; the next stored message takes seq 1: nothing was stored.
            ok = await alice.ok("msg.send", room=room, cid="c3", body="darning socks")
            assert ok["seq"] == 1
            assert "body" not in ok  # unchanged: the reply does not repeat it
            assert (await bob.push("msg"))["body"] == "darning socks"
            # Editing a message into a listed word is refused too.
            await alice.fails("msg.edit", 127, room=room, seq=1, body="darn")
            page = await bob.ok("history", room=room)
            assert [m["body"] for m in page["messages"]] == ["darning socks"]


async def test_moderation_masks_what_others_receive_and_history_keeps(tmp_path: Path) -> None:
    config = _config(
        tmp_path, MODERATION, plugin_settings={"moderation": {"words": ["darn"], "action": "mask"}}
    )
    with trio.fail_after(20):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = await make_room(alice, "bob")
            body = {"text": "Darn, darn it", "tag": 7}
            masked = {"text": "****, **** it", "tag": 7}
            ok = await alice.ok("msg.send", room=room, cid="c1", body=body)
            assert (ok["seq"], ok["body"]) == (1, masked)  # the sender learns what was stored
            assert (await bob.push("msg"))["body"] == masked
            # A retry of the same cid: dup, the original seq, the stored body.
            again = await alice.ok("msg.send", room=room, cid="c1", body=body)
            assert (again["seq"], again["dup"], again["body"]) == (1, True, masked)
            edited = await alice.ok("msg.edit", room=room, seq=1, body="oh darn")
            assert edited["body"] == "oh ****"
            assert (await bob.push("msg.edited"))["body"] == "oh ****"
            page = await bob.ok("history", room=room)
            assert [m["body"] for m in page["messages"]] == ["oh ****"]
            await bob.nothing("msg")


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_interceptors_chain_in_order_and_failures_follow_the_policy(
    tmp_path: Path, policy: str
) -> None:
    config = _config(
        tmp_path,
        f"{HERE}:Shout",
        MODERATION,
        plugin_fail_policy=policy,
        plugin_settings={"moderation": {"words": ["DARN"], "action": "mask"}},
    )
    with trio.fail_after(20):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = await _public_room(alice, bob)
            # shout first, then moderation sees the upper-cased text
            ok = await alice.ok("msg.send", room=room, cid="c1", body="oh darn")
            assert ok["body"] == "OH ****"
            assert (await alice.ok("msg.send", room=room, cid="c2", body=[1]))["seq"] == 2
            for n, body in enumerate(("raise", "nil", "what")):
                if policy == "open":  # shout is skipped; moderation still runs
                    ok = await alice.ok("msg.send", room=room, cid=f"x{n}", body=body)
                    assert "body" not in ok
                else:
                    error = await alice.fails("msg.send", 108, room=room, cid=f"x{n}", body=body)
                    assert error["reason"] == "message filter shout failed, retry"
            bodies = [m["body"] for m in (await bob.ok("history", room=room))["messages"]]
            unchanged = ["raise", "nil", "what"] if policy == "open" else []
            assert bodies == ["OH ****", [1], *unchanged]
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            assert server.ctx.plugins.intercept_errors == 3


async def test_a_retried_cid_is_not_intercepted_again(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            running_server(_config(tmp_path, f"{HERE}:Flaky")) as (_, info),
            clients(info.port, ("alice", "a")) as [alice],
        ):
            room = await _public_room(alice)
            first = await alice.ok("msg.send", room=room, cid="c1", body="x")
            again = await alice.ok("msg.send", room=room, cid="c1", body="x")
            assert (again["seq"], again["dup"]) == (first["seq"], True)
            await alice.fails("msg.send", 127, room=room, cid="c2", body="y")


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_slow_interceptor_meets_the_deadline_and_the_policy(
    tmp_path: Path, policy: str, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    config = _config(
        tmp_path, f"{HERE}:Slow", plugin_intercept_timeout=0.5, plugin_fail_policy=policy
    )
    with trio.fail_after(60):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = await _public_room(alice, bob)
            start = trio.current_time()
            if policy == "open":
                ok = await alice.ok("msg.send", room=room, cid="c1", body="slow")
                assert ok["seq"] == 1
                assert (await bob.push("msg"))["body"] == "slow"
            else:
                error = await alice.fails("msg.send", 108, room=room, cid="c1", body="slow")
                assert error["temporary"] is True
            # Answered at the deadline, not when the plugin is done (30 s).
            assert 0.5 <= trio.current_time() - start < 5
            # The plugin is still busy: other messages wait at most the deadline too.
            start = trio.current_time()
            if policy == "open":
                assert (await bob.ok("msg.send", room=room, cid="b1", body="quick"))["seq"] == 2
                assert (await alice.push("msg"))["body"] == "quick"
            else:
                await bob.fails("msg.send", 108, room=room, cid="b1", body="quick")
                await alice.nothing("msg")
            assert trio.current_time() - start < 5
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            assert server.ctx.plugins.intercept_timeouts == 2
            history = await bob.ok("history", room=room)
            expected = ["slow", "quick"] if policy == "open" else []
            assert [m["body"] for m in history["messages"]] == expected


async def test_a_held_message_does_not_stall_the_room(tmp_path: Path) -> None:
    gate = trio.Event()
    config = _config(
        tmp_path,
        f"{HERE}:Gate",
        plugin_intercept_timeout=30,
        plugin_settings={"gate": {"gate": gate}},
    )
    with trio.fail_after(20):
        async with (
            running_server(config) as (_, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
            trio.open_nursery() as nursery,
        ):
            room = await _public_room(alice, bob)
            replies: dict[str, dict[str, Any]] = {}

            async def send(cid: str, body: str) -> None:
                replies[cid] = await alice.ok("msg.send", room=room, cid=cid, body=body)

            nursery.start_soon(send, "held", "held")
            await trio.testing.wait_all_tasks_blocked()
            # The room serves others meanwhile: another sender's message, history, typing.
            assert (await bob.ok("msg.send", room=room, cid="b1", body="meanwhile"))["seq"] == 1
            assert (await alice.push("msg"))["body"] == "meanwhile"
            assert len((await bob.ok("history", room=room))["messages"]) == 1
            # alice's next message waits behind her held one: her order holds.
            nursery.start_soon(send, "after", "after")
            await trio.testing.wait_all_tasks_blocked()
            assert replies == {}
            gate.set()
            first = await bob.push("msg")
            second = await bob.push("msg")
            assert (first["seq"], first["body"]) == (2, "held, then let through")
            assert (second["seq"], second["body"]) == (3, "after")
    assert (replies["held"]["seq"], replies["after"]["seq"]) == (2, 3)


# -- supervision ------------------------------------------------------------------------


async def test_a_crashing_plugin_is_restarted_with_backoff(
    tmp_path: Path, lazy_clock: trio.testing.MockClock, ticking: None
) -> None:
    sink, events = trio.open_memory_channel[Any](1000)
    config = _config(tmp_path, f"{HERE}:Crashy", plugin_settings={"crashy": {"sink": sink}})
    with trio.fail_after(60):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            assert server.ctx is not None
            host = server.ctx.plugins
            assert host is not None
            assert (await events.receive())[0] == "started"
            room = await _public_room(alice, bob)
            delays = []
            for n in (1, 2):
                ok = await alice.ok("msg.send", room=room, cid=f"boom{n}", body="boom")
                # The room is unaffected: stored and delivered.
                assert (await bob.push("msg"))["seq"] == ok["seq"]
                body, failed_at = await events.receive()
                assert body == "boom"
                started, restarted_at = await events.receive()
                assert started == "started"
                delays.append(restarted_at - failed_at)
            # Exponential: 1 s, then 2 s (the plugin never ran a stable minute).
            assert [round(d, 3) for d in delays] == [1.0, 2.0]
            assert server.ctx.counters.plugin_failures == 2
            [status] = host.status()
            assert (status.running, status.failures, status.restarts) == (True, 2, 2)
            # The restarted plugin gets events again; the server serves on.
            await alice.ok("msg.send", room=room, cid="fine", body="fine")
            assert (await events.receive())[0] == "fine"


async def test_a_full_plugin_mailbox_drops_events_and_never_blocks_the_room(
    tmp_path: Path,
) -> None:
    gate = trio.Event()
    config = _config(tmp_path, f"{HERE}:Clogged", plugin_settings={"clogged": {"gate": gate}})
    with trio.fail_after(20):
        async with (
            running_server(config) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            room = await _public_room(alice, bob)
            for n in range(6):
                assert (await alice.ok("msg.send", room=room, cid=f"c{n}", body=n))["seq"] == n + 1
                assert (await bob.push("msg"))["body"] == n
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            # One event in the handler, two queued: the others were dropped, counted.
            assert server.ctx.plugins.dropped_events == 3
            assert server.ctx.plugins.status()[0].dropped_events == 3
            gate.set()


# -- threads --------------------------------------------------------------------------


async def test_thread_plugins_block_and_interoperate(tmp_path: Path) -> None:
    gate = threading.Event()
    config = _config(
        tmp_path,
        f"{HERE}:Upper",
        f"{HERE}:Watcher",
        plugin_intercept_timeout=10,
        plugin_settings={"watcher": {"gate": gate}},
    )
    try:
        with trio.fail_after(30):
            async with (
                running_server(config) as (_, info),
                clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
            ):
                room = await _public_room(alice, bob)
                ok = await alice.ok("msg.send", room=room, cid="c1", body="hello")
                assert ok["body"] == "HELLO"
                assert (await bob.push("msg"))["body"] == "HELLO"
                # The watcher's thread is blocked now; the server is not.
                ok = await alice.ok("msg.send", room=room, cid="c2", body="again")
                assert (ok["seq"], ok["body"]) == (2, "AGAIN")
                assert (await bob.push("msg"))["body"] == "AGAIN"
                gate.set()
                for expected in ("seen HELLO", "seen AGAIN"):
                    msg = await bob.push("msg", sender="bot:watcher")
                    assert msg["body"] == expected
                    assert (await alice.push("msg", sender="bot:watcher"))["body"] == expected
    finally:
        gate.set()  # never leave the plugin's thread blocked


# -- commands -----------------------------------------------------------------------


async def test_the_echo_bot_answers_a_slash_command(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            running_server(_config(tmp_path, ECHO)) as (server, info),
            clients(info.port, ("alice", "a"), ("bob", "b")) as (alice, bob),
        ):
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            assert server.ctx.plugins.commands() == {
                "echo": ("echo", "repeat the text after /echo")
            }
            room = await make_room(alice, "bob")
            ok = await alice.ok("msg.send", room=room, cid="c1", body="/echo hi")
            assert (await bob.push("msg"))["body"] == "/echo hi"  # an ordinary message too
            for client in (alice, bob):
                answer = await client.push("msg", sender="bot:echo")
                assert (answer["seq"], answer["body"]) == (ok["seq"] + 1, "hi")
            await alice.ok("msg.send", room=room, cid="c2", body={"text": "/ECHO  two words "})
            assert (await bob.push("msg", sender="bot:echo"))["body"] == "two words"
            await alice.ok("msg.send", room=room, cid="c3", body="/echo")
            assert (await bob.push("msg", sender="bot:echo"))["body"] == "usage: /echo <text>"
            # Not commands: another name, a slash later in the text.
            await alice.ok("msg.send", room=room, cid="c4", body="/echoes x")
            await alice.ok("msg.send", room=room, cid="c5", body="say /echo x")
            await bob.push("msg", cid="c5")
            await bob.nothing("msg", within=0.5)
            page = await bob.ok("history", room=room)
            senders = [(m["sender"], m["body"]) for m in page["messages"]][-2:]
            assert senders == [("alice", "/echoes x"), ("alice", "say /echo x")]
            # The bot is a sender, not a member.
            members = await alice.ok("room.members", room=room)
            assert {m["user"] for m in members["members"]} == {"alice", "bob"}


async def test_an_echo_to_a_missing_room_fails_the_post(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(_config(tmp_path, ECHO)) as (server, _):
            assert server.ctx is not None
            assert server.ctx.plugins is not None
            context = server.ctx.plugins.context("echo")
            with pytest.raises(PostError, match="no such room") as failure:
                await context.post("no-such-room", "hello")
            assert failure.value.code == 121
            with pytest.raises(PostError, match="non-nil") as failure:
                await context.post("no-such-room", None)
            assert failure.value.code == 100


# -- refusal at start --------------------------------------------------------------------


def test_an_incompatible_plugin_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(PluginError) as refused:
        Server(_config(tmp_path, f"{HERE}:FuturePlugin"))
    assert str(refused.value) == (
        f"plugin 'future' 9.0 ({HERE}:FuturePlugin) needs plugin API version 99, but this "
        f"server provides plugin API version {PLUGIN_API_VERSION}: install a release of the "
        "plugin made for this server"
    )


def test_tether_serve_refuses_an_incompatible_plugin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tether.__main__ import main  # noqa: PLC0415

    file = tmp_path / "tether.toml"
    file.write_text(f'data_dir = "{tmp_path}"\nport = 0\nplugins = ["{HERE}:FuturePlugin"]\n')
    assert main(["serve", "--config", str(file)]) == 2
    err = capsys.readouterr().err
    assert "tether: configuration error: plugin 'future' 9.0" in err
    assert "needs plugin API version 99" in err
