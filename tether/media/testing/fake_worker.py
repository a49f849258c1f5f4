"""A fake media worker: the wire protocol of ``tether.media.worker`` without any media.

Run as ``python -m tether.media.testing.fake_worker`` with the real worker's
options (they are accepted and mostly ignored). It answers every method of
the contract (docs: notes/CALLS_SPEC.md) with canned but well-formed results:

* ``publish`` parses the offer's media sections (``m=``, ``a=mid``, the
  direction, ``a=rid:... send``) and answers with an SDP built from them; an
  offer that does not start with ``v=0`` or has no usable section is
  ``bad_sdp``. After each publish it emits ``transport`` (pub, connected).
* ``subscribe`` keeps one m-line per track ever subscribed (removed ones are
  made inactive) and returns a new offer only when the set changed.
* ``answer`` checks the answer looks like SDP and emits ``transport``
  (sub, connected).

Test-only methods: ``fake.exit {code}`` exits at once (a crash);
``fake.hang {}`` is never answered; ``fake.event {ev, p}`` emits that event.

It is a blocking loop on stdin/stdout with no event loop at all: it exits
when stdin closes. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from tether.media import wire

_KINDS = ("audio", "video")


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Member:
    published: dict[str, dict[str, Any]] = field(default_factory=dict)  # mid -> track
    sub_mids: dict[str, str] = field(default_factory=dict)  # mid -> track id
    subscribed: tuple[str, ...] = ()
    sub_version: int = 0
    has_sub: bool = False


def parse_offer(sdp: object) -> list[dict[str, Any]]:
    """The published sections of an SDP offer: ``[{mid, kind, rids}]``.

    Raises:
        _Refused: not SDP, or no sendonly/sendrecv audio/video section.
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise _Refused("bad_sdp", "not an SDP offer (expected it to start with v=0)")
    sections: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            current = {"kind": kind, "mid": None, "rids": [], "direction": "sendrecv"}
            sections.append(current)
        elif current is None:
            continue
        elif line.startswith("a=mid:"):
            current["mid"] = line[6:]
        elif line.startswith("a=rid:") and line.endswith(" send"):
            current["rids"].append(line[6:].split(" ", 1)[0])
        elif line[2:] in ("sendonly", "recvonly", "inactive", "sendrecv") and line[:2] == "a=":
            current["direction"] = line[2:]
    published = [
        {"mid": s["mid"], "kind": s["kind"], "rids": s["rids"]}
        for s in sections
        if s["kind"] in _KINDS and s["mid"] and s["direction"] in ("sendonly", "sendrecv")
    ]
    if not published:
        raise _Refused("bad_sdp", "no sendonly audio or video section with a mid")
    return published


def _answer_sdp(tracks: list[dict[str, Any]]) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    lines.append("a=group:BUNDLE " + " ".join(t["mid"] for t in tracks))
    for t in tracks:
        pt = 111 if t["kind"] == "audio" else 96
        lines += [
            f"m={t['kind']} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 127.0.0.1",
            f"a=mid:{t['mid']}",
            "a=recvonly",
            "a=ice-ufrag:fake",
            "a=ice-pwd:fakefakefakefakefakefake",
            "a=fingerprint:sha-256 " + ":".join(["00"] * 32),
            "a=setup:passive",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        ]
    return "\r\n".join(lines) + "\r\n"


def _offer_sdp(participant: str, member: _Member, kinds: dict[str, str]) -> str:
    lines = ["v=0", f"o=- 2 {member.sub_version} IN IP4 127.0.0.1", "s=-", "t=0 0"]
    lines.append("a=group:BUNDLE " + " ".join(member.sub_mids))
    for mid, track in member.sub_mids.items():
        active = track in member.subscribed
        kind = kinds.get(track, "audio")
        pt = 111 if kind == "audio" else 96
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 127.0.0.1",
            f"a=mid:{mid}",
            "a=sendonly" if active else "a=inactive",
            f"a=msid:{track.split('.', 1)[0]} {track}",
            "a=ice-ufrag:fake",
            "a=ice-pwd:fakefakefakefakefakefake",
            "a=fingerprint:sha-256 " + ":".join(["00"] * 32),
            "a=setup:actpass",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        ]
    return "\r\n".join(lines) + "\r\n"


class FakeWorker:
    """The fake worker's state and method handlers (usable in-process too)."""

    def __init__(self, out: BinaryIO, *, port: int, addresses: list[str]) -> None:
        self.out = out
        self.port = port
        self.addresses = addresses
        self.routers: dict[str, dict[str, _Member]] = {}
        self.paused: set[tuple[str, str]] = set()
        self.loss = 0.0

    def emit(self, name: str, params: dict[str, Any]) -> None:
        """Write an event frame."""
        self.out.write(wire.event(name, params))
        self.out.flush()

    def handle(self, message: dict[str, Any]) -> None:
        """Answer one request frame (or stay silent for ``fake.hang``)."""
        request_id = message.get("id")
        method = message.get("m")
        params = message.get("p")
        if not isinstance(request_id, int) or not isinstance(method, str):
            return
        if not isinstance(params, dict):
            params = {}
        if method == "fake.hang":
            return
        if method == "fake.exit":
            os._exit(int(params.get("code", 1)))
        after: list[tuple[str, dict[str, Any]]] = []
        try:
            result = self._dispatch(method, params, after)
        except _Refused as exc:
            frame = wire.error(request_id, exc.code, str(exc))
        else:
            frame = wire.result(request_id, result)
        self.out.write(frame)
        self.out.flush()
        for name, event_params in after:
            self.emit(name, event_params)

    def _router(self, params: dict[str, Any]) -> tuple[str, dict[str, _Member]]:
        router = params.get("router")
        if not isinstance(router, str):
            raise _Refused("bad_request", "router must be a str")
        members = self.routers.get(router)
        if members is None:
            raise _Refused("not_found", f"no router {router!r}")
        return router, members

    def _dispatch(
        self, method: str, p: dict[str, Any], after: list[tuple[str, dict[str, Any]]]
    ) -> Any:
        if method == "worker.info":
            return {
                "pid": os.getpid(),
                "port": self.port,
                "addresses": self.addresses,
                "versions": {"aiortc": "fake", "aioice": "fake"},
            }
        if method == "worker.stats":
            keys = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rtx_sent")
            stats: dict[str, Any] = dict.fromkeys(keys, 0)
            stats.update(
                cpu_s=0.0,
                routers=len(self.routers),
                transports=0,
                nacks_received=0,
                plis_sent=0,
                hook_errors=0,
                dropped_packets=0,
            )
            return stats
        if method == "router.open":
            router = p.get("router")
            if not isinstance(router, str):
                raise _Refused("bad_request", "router must be a str")
            self.routers.setdefault(router, {})
            return {}
        if method == "router.close":
            self.routers.pop(str(p.get("router")), None)
            return {}
        if method == "debug.loss":
            self.loss = float(p.get("rate", 0.0))
            return {}
        if method == "fake.event":
            after.append((str(p.get("ev")), dict(p.get("p") or {})))
            return {}
        router, members = self._router(p)
        if method == "router.stats":
            return {"participants": {pid: {"publish": [], "subscribe": []} for pid in members}}
        if method == "pause":
            track = str(p.get("track"))
            if p.get("paused"):
                self.paused.add((router, track))
            else:
                self.paused.discard((router, track))
            return {}
        participant = p.get("participant")
        if not isinstance(participant, str):
            raise _Refused("bad_request", "participant must be a str")
        if method == "drop":
            members.pop(participant, None)
            return {}
        if method == "publish":
            tracks = parse_offer(p.get("sdp"))
            member = members.setdefault(participant, _Member())
            member.published = {t["mid"]: t for t in tracks}
            after.append(
                (
                    "transport",
                    {
                        "router": router,
                        "participant": participant,
                        "pc": "pub",
                        "state": "connected",
                    },
                )
            )
            return {
                "sdp": _answer_sdp(tracks),
                "tracks": [
                    {"id": f"{participant}.{t['mid']}", "kind": t["kind"], "rids": t["rids"]}
                    for t in tracks
                ],
            }
        if method == "subscribe":
            wanted = p.get("tracks")
            if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
                raise _Refused("bad_request", "tracks must be an array of str")
            member = members.setdefault(participant, _Member())
            kinds = {
                f"{pid}.{mid}": t["kind"]
                for pid, m in members.items()
                for mid, t in m.published.items()
            }
            for track in wanted:
                if track not in kinds:
                    raise _Refused("not_found", f"no track {track!r}")
            fresh = tuple(wanted)
            if member.has_sub and set(fresh) == set(member.subscribed):
                return {"sdp": None, "mids": dict(member.sub_mids)}
            member.has_sub = True
            for track in fresh:
                if track not in member.sub_mids.values():
                    member.sub_mids[str(len(member.sub_mids))] = track
            member.subscribed = fresh
            member.sub_version += 1
            return {
                "sdp": _offer_sdp(participant, member, kinds),
                "mids": {m: t for m, t in member.sub_mids.items() if t in fresh},
            }
        member_or_none = members.get(participant)
        if method == "answer":
            if member_or_none is None or not member_or_none.has_sub:
                raise _Refused("not_found", "no subscriber connection")
            sdp = p.get("sdp")
            if not isinstance(sdp, str) or not sdp.startswith("v=0"):
                raise _Refused("bad_sdp", "not an SDP answer")
            after.append(
                (
                    "transport",
                    {
                        "router": router,
                        "participant": participant,
                        "pc": "sub",
                        "state": "connected",
                    },
                )
            )
            return {}
        if method in ("candidate", "prefer"):
            if member_or_none is None:
                raise _Refused("not_found", f"no participant {participant!r}")
            return {}
        raise _Refused("bad_request", f"unknown method {method!r}")


def fake_command(index: int) -> list[str]:
    """The command line of fake worker ``index`` (a ``MediaPool`` ``command``)."""
    return [sys.executable, "-m", "tether.media.testing.fake_worker", "--index", str(index)]


def main(argv: list[str] | None = None) -> int:
    """Serve the pipe until stdin closes."""
    parser = argparse.ArgumentParser(prog="fake_worker")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--announce", action="append", default=[])
    parser.add_argument("--stun", action="append", default=[])
    parser.add_argument("--max-publish-bitrate", type=int, default=3_000_000)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    stdin: Any = sys.stdin.buffer  # a BufferedReader (read1 returns what is there)
    worker = FakeWorker(
        sys.stdout.buffer, port=args.port or 40000 + args.index, addresses=args.announce
    )
    decoder = wire.FrameDecoder()
    while True:
        data = stdin.read1(65536)
        if not data:
            return 0
        try:
            messages = decoder.feed(data)
        except wire.WireError as exc:
            print(f"fake worker: {exc}", file=sys.stderr)
            return 2
        for message in messages:
            worker.handle(message)


if __name__ == "__main__":
    sys.exit(main())
