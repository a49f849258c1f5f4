"""CallActor timer rules on the autojump clock: rejoin grace, offer timeout, router reopen.

The media pool and storage are small in-memory stand-ins (the pool's real
I/O is covered by tests/unit/test_media_pool.py and the integration tests);
what is under test here is the actor's state machine against trio time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from tether.actors import Actor, ActorRef, open_actor_system
from tether.actors.call import (
    MAX_FIRED_PER_PARTICIPANT,
    OFFER_TIMEOUT_S,
    REOPEN_RETRY_S,
    CallConnectionGone,
    CallRequest,
)
from tether.actors.context import PresenceWriter, ServerContext
from tether.config import ServerConfig
from tether.media.pool import MediaUnavailable, WorkerLost
from tether.storage.errors import NotFound
from tether.transport.auth import TokenVerifier
from tether.transport.protocol.connection import Limits
from tether.transport.protocol.events import (
    CallAnswer,
    CallIce,
    CallJoin,
    CallParticipant,
    CallPublish,
    CallRestarted,
    Error,
    Reply,
)

ROOM = "room-1"
GRACE = 15.0


class FakeStore:
    async def get_room(self, room_id: str) -> object:
        if room_id != ROOM:
            raise NotFound(room_id)
        return SimpleNamespace(
            id=room_id, kind="public", name="r", owner="alice", last_seq=0, created_at=0
        )

    async def list_members(self, room_id: str) -> list[Any]:
        return [SimpleNamespace(user_id=u, role="member") for u in ("alice", "bob")]

    async def receipts(self, room_id: str) -> list[Any]:
        return []


class FakePool:
    """Answers like a worker would; ``down`` makes router opening fail."""

    request_timeout = 1.0

    def __init__(self) -> None:
        self.routers: dict[str, Any] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        #: Set: ``candidate`` requests wait on it (a worker that is slow to answer).
        self.hold_candidates: trio.Event | None = None

    async def open_router(self, router: str, owner: Any, *, wait: float = 0.0) -> int:
        if self.down:
            raise MediaUnavailable("no worker")
        self.routers[router] = owner
        return 0

    async def close_router(self, router: str) -> None:
        self.routers.pop(router, None)

    def worker_of(self, router: str) -> int:
        return 0

    async def call(self, router: str, method: str, params: dict[str, Any]) -> Any:
        if router not in self.routers:
            raise MediaUnavailable("router gone")
        self.requests.append((method, params))
        if method == "candidate" and self.hold_candidates is not None:
            await self.hold_candidates.wait()
        if method == "publish":
            pid = params["participant"]
            return {"sdp": "v=0 answer", "tracks": [{"id": f"{pid}.0", "kind": "audio"}]}
        if method == "subscribe":
            tracks = params["tracks"]
            return {"sdp": "v=0 offer", "mids": {str(i): t for i, t in enumerate(tracks)}}
        return {}


class Inbox:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = trio.Event()

    def add(self, event: Any) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()


class Conn(Actor):
    """Stands in for a ConnectionActor: records what the call sends it."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.add(message.event)


class Client:
    def __init__(self, ctx: ServerContext, user: str, conn_id: int) -> None:
        self.ctx = ctx
        self.user = user
        self.conn_id = conn_id
        self.box = Inbox()
        self.inbox = self.box.events
        self.ref: ActorRef[Any] = ctx.system.spawn(Conn, self.box)
        self.refs = iter(range(1, 10_000))

    def send(self, event: Any) -> None:
        call = self.ctx.calls.get_or_spawn(ROOM)
        call.tell(CallRequest(self.ref, self.conn_id, self.user, "d", f"s-{self.user}", event))

    async def request(self, cls: type, **fields: Any) -> Any:
        ref = next(self.refs)
        self.send(cls(ref=ref, room=ROOM, **fields))
        return await self.answer(ref)

    async def answer(self, ref: int) -> Any:
        with trio.fail_after(60):
            while True:
                for event in self.inbox:
                    if isinstance(event, Reply | Error) and event.ref == ref:
                        self.inbox.remove(event)
                        return event
                await self.box.changed.wait()

    def pushes(self, cls: type) -> list[Any]:
        return [e for e in self.inbox if isinstance(e, cls)]


@asynccontextmanager
async def call_context(**config: Any) -> AsyncIterator[tuple[ServerContext, FakePool]]:
    store = FakeStore()
    async with open_actor_system() as system:
        ctx = ServerContext(
            config=ServerConfig(secret="s" * 32, call_rejoin_grace=GRACE, **config),
            system=system,
            verifier=TokenVerifier(b"s" * 32),
            store=store,  # type: ignore[arg-type]
            server_version="tether/test",
            presence_writer=PresenceWriter(store),  # type: ignore[arg-type]
            protocol_limits=Limits(),
        )
        pool = FakePool()
        ctx.media = pool  # type: ignore[assignment]
        yield ctx, pool


async def test_the_grace_keeps_a_participant_then_removes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with call_context() as (ctx, _):
        alice, bob = Client(ctx, "alice", 1), Client(ctx, "bob", 2)
        assert isinstance(await alice.request(CallJoin), Reply)
        assert isinstance(await bob.request(CallJoin), Reply)
        ref = ctx.calls.get(ROOM)
        assert ref is not None
        ref.tell(CallConnectionGone(1))
        await trio.sleep(GRACE - 1)
        assert not [p for p in bob.pushes(CallParticipant) if p.action == "left"]
        await trio.sleep(2)
        (left,) = [p for p in bob.pushes(CallParticipant) if p.action == "left"]
        assert left.participant.user == "alice"


async def test_a_rejoin_within_the_grace_cancels_the_removal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with call_context() as (ctx, _):
        alice, bob = Client(ctx, "alice", 1), Client(ctx, "bob", 2)
        first = await alice.request(CallJoin)
        await bob.request(CallJoin)
        ctx.calls.get(ROOM).tell(CallConnectionGone(1))  # type: ignore[union-attr]
        await trio.sleep(GRACE / 2)
        back = Client(ctx, "alice", 3)  # same session, new connection
        again = await back.request(CallJoin)
        assert again.data["participant"] == first.data["participant"]
        await trio.sleep(GRACE * 2)
        assert not [p for p in bob.pushes(CallParticipant) if p.action == "left"]


async def test_an_unanswered_offer_restarts_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with call_context() as (ctx, pool):
        alice, bob = Client(ctx, "alice", 1), Client(ctx, "bob", 2)
        await alice.request(CallJoin)
        await bob.request(CallJoin)
        await alice.request(CallPublish, sdp="v=0 offer")
        await trio.sleep(OFFER_TIMEOUT_S - 1)
        assert not bob.pushes(CallRestarted)
        await trio.sleep(2)
        (restart,) = bob.pushes(CallRestarted)
        assert "offer" in restart.reason
        assert not alice.pushes(CallRestarted)
        # bob's media was dropped, and he was offered alice's track again
        assert [m for m, p in pool.requests if m == "drop"] == ["drop"]
        assert len([m for m, _ in pool.requests if m == "subscribe"]) == 2
        # answering the new offer in time settles it
        assert isinstance(await bob.request(CallAnswer, sdp="v=0 answer"), Reply)
        await trio.sleep(OFFER_TIMEOUT_S * 3)
        assert len(bob.pushes(CallRestarted)) == 1


async def test_a_lost_router_is_reopened_until_a_worker_is_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with call_context() as (ctx, pool):
        alice = Client(ctx, "alice", 1)
        await alice.request(CallJoin)
        (router,) = pool.routers
        pool.down = True
        owner = pool.routers.pop(router)
        owner.tell(WorkerLost(router, 0))
        await trio.sleep(REOPEN_RETRY_S * 3)
        assert not alice.pushes(CallRestarted)
        assert (await alice.request(CallPublish, sdp="v=0")).code == 132
        pool.down = False
        await trio.sleep(REOPEN_RETRY_S + 1)
        (restart,) = alice.pushes(CallRestarted)
        assert restart.reason == "media worker restarted"
        assert len(pool.routers) == 1
        assert isinstance(await alice.request(CallPublish, sdp="v=0"), Reply)


async def test_a_candidate_flood_keeps_a_bounded_number_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with call_context() as (ctx, pool):
        alice = Client(ctx, "alice", 1)
        await alice.request(CallJoin)
        pool.hold_candidates = gate = trio.Event()
        for _ in range(200):
            alice.send(
                CallIce(room=ROOM, pc="pub", candidate="candidate:1 1 udp 1 1.2.3.4 9 typ host")
            )
        await trio.testing.wait_all_tasks_blocked()
        sent = [m for m, _ in pool.requests if m == "candidate"]
        assert len(sent) == MAX_FIRED_PER_PARTICIPANT
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        # once answered, the budget is free again
        alice.send(CallIce(room=ROOM, pc="pub", candidate=None))
        await trio.testing.wait_all_tasks_blocked()
        assert (
            len([m for m, _ in pool.requests if m == "candidate"]) == MAX_FIRED_PER_PARTICIPANT + 1
        )
