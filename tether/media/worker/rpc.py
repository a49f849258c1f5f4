"""RPC dispatch of the worker: method name + params map → result (CALLS_SPEC.md).

Errors are :class:`~tether.media.worker.router.RpcError` with the spec's codes:
``bad_request`` (malformed params), ``bad_sdp``, ``not_found``, ``internal``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aiortc

from tether.media.worker.router import Consumer, RpcError, Worker
from tether.media.worker.stats import COUNTERS

log = logging.getLogger("tether.media.worker.rpc")

Params = dict[str, Any]
Handler = Callable[[Worker, Params], Awaitable[Any]]

MAX_ID_LENGTH = 128
MAX_SDP_LENGTH = 256 * 1024
MAX_TRACKS = 1024


def _str(p: Params, name: str, max_len: int = MAX_ID_LENGTH) -> str:
    v = p.get(name)
    if not isinstance(v, str) or not v or len(v) > max_len:
        raise RpcError("bad_request", f"Expected {name!r} as a non-empty string")
    return v


def _opt_str(p: Params, name: str, max_len: int = MAX_ID_LENGTH) -> str | None:
    v = p.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise RpcError("bad_request", f"Expected {name!r} as a string or None")
    return v


def _int(p: Params, name: str, lo: int = 0, hi: int = 1 << 16) -> int:
    v = p.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise RpcError("bad_request", f"Expected {name!r} as an integer in [{lo}, {hi}]")
    return v


def _bool(p: Params, name: str) -> bool:
    v = p.get(name)
    if not isinstance(v, bool):
        raise RpcError("bad_request", f"Expected {name!r} as a boolean")
    return v


def _sdp(p: Params) -> str:
    v = p.get("sdp")
    if not isinstance(v, str) or len(v) > MAX_SDP_LENGTH:
        raise RpcError("bad_request", "Expected 'sdp' as a string")
    return v


async def _info(w: Worker, p: Params) -> Any:
    return {
        "pid": os.getpid(),
        "port": w.mux.port,
        "addresses": list(w.mux.announced),
        "versions": {"aiortc": aiortc.__version__, "aioice": aioice.__version__},
    }


async def _stats(w: Worker, p: Params) -> Any:
    return {
        "cpu_s": time.process_time(),
        **COUNTERS.snapshot(),
        "routers": len(w.routers),
        "transports": w.transports,
    }


async def _router_open(w: Worker, p: Params) -> Any:
    w.open_router(_str(p, "router"))
    return {}


async def _router_close(w: Worker, p: Params) -> Any:
    await w.close_router(_str(p, "router"))
    return {}


async def _router_stats(w: Worker, p: Params) -> Any:
    router = w.router(_str(p, "router"))
    return {"participants": {pid: x.stats() for pid, x in router.participants.items()}}


async def _publish(w: Worker, p: Params) -> Any:
    return await w.publish(_str(p, "router"), _str(p, "participant"), _sdp(p))


async def _subscribe(w: Worker, p: Params) -> Any:
    tracks = p.get("tracks")
    if (
        not isinstance(tracks, list)
        or len(tracks) > MAX_TRACKS
        or not all(isinstance(t, str) and t for t in tracks)
    ):
        raise RpcError("bad_request", "Expected 'tracks' as a list of track ids")
    return await w.subscribe(_str(p, "router"), _str(p, "participant"), tracks)


async def _answer(w: Worker, p: Params) -> Any:
    await w.answer(_str(p, "router"), _str(p, "participant"), _sdp(p))
    return {}


async def _candidate(w: Worker, p: Params) -> Any:
    pc = p.get("pc")
    if pc not in ("pub", "sub"):
        raise RpcError("bad_request", "Expected 'pc' to be 'pub' or 'sub'")
    index = p.get("sdp_mline_index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise RpcError("bad_request", "Expected 'sdp_mline_index' as an integer or None")
    await w.candidate(
        router_id=_str(p, "router"),
        participant_id=_str(p, "participant"),
        pc=pc,
        candidate=_opt_str(p, "candidate", 2048),
        sdp_mid=_opt_str(p, "sdp_mid"),
        sdp_mline_index=index,
    )
    return {}


async def _pause(w: Worker, p: Params) -> Any:
    w.pause(_str(p, "router"), _str(p, "track"), _bool(p, "paused"))
    return {}


async def _prefer(w: Worker, p: Params) -> Any:
    w.prefer(
        _str(p, "router"),
        _str(p, "participant"),
        _str(p, "track"),
        _int(p, "width"),
        _int(p, "height"),
    )
    return {}


async def _drop(w: Worker, p: Params) -> Any:
    router = w.router(_str(p, "router"))
    await router.drop(_str(p, "participant"))
    return {}


async def _debug_loss(w: Worker, p: Params) -> Any:
    rate = p.get("rate")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise RpcError("bad_request", "Expected 'rate' as a number in [0, 1]")
    Consumer.loss_rate = float(rate)
    return {}


METHODS: dict[str, Handler] = {
    "worker.info": _info,
    "worker.stats": _stats,
    "router.open": _router_open,
    "router.close": _router_close,
    "router.stats": _router_stats,
    "publish": _publish,
    "subscribe": _subscribe,
    "answer": _answer,
    "candidate": _candidate,
    "pause": _pause,
    "prefer": _prefer,
    "drop": _drop,
    "debug.loss": _debug_loss,
}


async def dispatch(worker: Worker, method: Any, params: Any) -> tuple[bool, Any]:
    """Run one request; return ``(True, result)`` or ``(False, {"code", "message"})``."""
    handler = METHODS.get(method) if isinstance(method, str) else None
    if handler is None:
        return False, {"code": "bad_request", "message": f"Unknown method {method!r}"}
    if not isinstance(params, dict):
        return False, {"code": "bad_request", "message": "Expected 'p' to be a map"}
    try:
        return True, await handler(worker, params)
    except RpcError as exc:
        return False, {"code": exc.code, "message": exc.message}
    except Exception as exc:
        log.exception("%s failed", method)
        return False, {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
