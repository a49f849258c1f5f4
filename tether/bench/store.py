"""Storage write path: closed-loop producers appending messages, group-committed.

``tether bench store`` opens a :func:`tether.storage.open_store` in this
process, on SQLite in a throw-away data folder and on PostgreSQL (in a
throw-away schema, when ``--postgres-url`` answers; otherwise that backend is
reported as skipped, with the reason). ``--producers`` tasks each append
messages one after the other to rooms picked at random, waiting for each
acknowledgement (= commit) before sending the next, as a connection actor
does. Reported per backend: ``messages_per_s``, ``ack_p50_ms`` and
``ack_p99_ms`` (append call to acknowledgement), ``batch_size_mean`` (ops per
transaction), and the store's commit statistics. After the run the rooms'
``last_seq`` must add up to the number of appends (``verified``).
"""

from __future__ import annotations

import argparse
import gc
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from tether.storage import default_url, open_store
from tether.storage.database import create_engine_for, normalise_url
from tether.storage.sql import DEFAULT_MAX_BATCH, SqlStore

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``tether bench store``."""
    parser.add_argument("--producers", type=int, default=200, help="concurrent appenders")
    parser.add_argument("--rooms", type=int, default=50, help="rooms written to")
    parser.add_argument("--messages", type=int, default=60_000, help="appends measured")
    parser.add_argument("--warmup", type=int, default=3_000, help="appends before measuring")
    parser.add_argument("--body-bytes", type=int, default=100, help="size of each body's text")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL database to measure in a temporary schema ('' to skip)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="cap on ops per transaction"
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql",
        help="comma-separated subset of sqlite,postgresql",
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, int(len(sorted_values) * fraction))
    return sorted_values[index]


async def _load(store: SqlStore, args: argparse.Namespace) -> dict[str, Any]:
    users = [f"bench-user-{i}" for i in range(args.producers)]
    for user_id in users:
        await store.upsert_user(user_id, user_id)
    rooms = [
        (await store.create_room("public", f"room {i}", users[0], users)).id
        for i in range(args.rooms)
    ]
    text = "x" * args.body_bytes
    latencies: list[float] = []

    async def produce(index: int, count: int, tag: str, record: bool) -> None:
        rng = random.Random(index)
        sender = users[index]
        for n in range(count):
            body = {"text": text, "n": n}
            started = time.perf_counter()
            await store.append_message(
                rng.choice(rooms), sender, f"{tag}-{n}", body, time.time_ns() // 1_000_000
            )
            if record:
                latencies.append(time.perf_counter() - started)

    async def phase(total: int, tag: str, *, record: bool) -> float:
        per_producer, extra = divmod(total, args.producers)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(args.producers):
                count = per_producer + (1 if index < extra else 0)
                nursery.start_soon(produce, index, count, tag, record)
        return time.perf_counter() - started

    await phase(args.warmup, "warm", record=False)
    # As the server does after start-up (ARCHITECTURE.md, "Transport"): move
    # what exists now out of the collector's reach, so that a full collection
    # scans only what the run allocates.
    gc.collect()
    gc.freeze()
    before = store.statistics()
    elapsed = await phase(args.messages, "run", record=True)
    after = store.statistics()
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    latencies.sort()
    total_seq = 0
    for room_id in rooms:
        total_seq += (await store.get_room(room_id)).last_seq
    batches = after.batches - before.batches
    return {
        "messages": args.messages,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(args.messages / elapsed),
        "ack_p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "ack_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "ack_max_ms": round(latencies[-1] * 1000, 2),
        "batch_size_mean": round((after.ops_committed - before.ops_committed) / batches, 1),
        "batch_size_max": after.max_batch_size,
        "batches": batches,
        "commit_ms_ewma": round(after.commit_latency_ms_ewma, 2),
        "failures": after.failures - before.failures,
        "verified": total_seq == args.warmup + args.messages,
        "gc_frozen_objects": frozen,
    }


def _run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="tether-bench-store-"))
    try:

        async def main() -> dict[str, Any]:
            async with open_store(default_url(data_dir), max_batch=args.max_batch) as store:
                return await _load(store, args)

        return trio.run(main)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _run_postgresql(args: argparse.Namespace) -> dict[str, Any]:
    if not args.postgres_url:
        return {"skipped": "no --postgres-url"}
    base = normalise_url(args.postgres_url)
    schema = f"tether_bench_{secrets.token_hex(4)}"
    admin = create_engine_for(base.update_query_dict({"connect_timeout": "3"}))
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.SQLAlchemyError as exc:
        admin.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return {"skipped": f"PostgreSQL unreachable at {base.render_as_string()}: {reason}"}
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:

        async def main() -> dict[str, Any]:
            async with open_store(
                url.render_as_string(hide_password=False), max_batch=args.max_batch
            ) as store:
                return await _load(store, args)

        return trio.run(main)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario on each backend; returns the figures per backend."""
    if args.producers < 1 or args.rooms < 1 or args.messages < args.producers:
        raise SystemExit(
            "tether bench store: need producers >= 1, rooms >= 1, messages >= producers"
        )
    wanted = {name.strip() for name in args.backends.split(",") if name.strip()}
    result: dict[str, Any] = {
        "producers": args.producers,
        "rooms": args.rooms,
        "max_batch": args.max_batch,
    }
    if "sqlite" in wanted:
        result["sqlite"] = _run_sqlite(args)
    if "postgresql" in wanted:
        result["postgresql"] = _run_postgresql(args)
    return result
