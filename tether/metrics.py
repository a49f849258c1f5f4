"""Prometheus metrics: a fixed-bucket histogram, the text-format writer, and ``/metrics``.

The exposition format is Prometheus text format 0.0.4 (``# HELP``, ``# TYPE``,
one sample per line), small enough to write here rather than depend on
``prometheus_client``: the server already keeps its counters in plain ints
(``tether.actors.context.Counters``, the store's and the actor system's
statistics), so a scrape only has to read and format them.

:class:`Histogram` is what hot paths observe into (the room's fan-out, the
store's group commit): ``observe`` is a bisect over a dozen fixed bounds and
three additions, with no lock (everything runs on the trio thread) and no
allocation.

Labels never carry user ids, room ids or anything a client chose (cardinality
and privacy): only closed sets such as actor kinds and session states.

This module imports nothing from tether but ``__version__`` when it is
imported, so that every layer can own a :class:`Histogram`
(``tether.storage`` included).
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable

from tether import __version__

if TYPE_CHECKING:
    from tether.actors.context import ServerContext
    from tether.transport.server import Listener

__all__ = [
    "BATCH_OPS_BUCKETS",
    "COMMIT_SECONDS_BUCKETS",
    "CONTENT_TYPE",
    "FANOUT_SECONDS_BUCKETS",
    "Exposition",
    "Histogram",
    "render_metrics",
]

#: The ``Content-Type`` of a text-format 0.0.4 page.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Fan-out (commit result to outboxes): normally tens of microseconds, more
#: when the room's mailbox is busy.
FANOUT_SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
#: One group-commit transaction, thread hop included; failed ones wait out
#: SQLite's busy timeout (5 s).
COMMIT_SECONDS_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Writes per transaction (the store caps a batch at 1,000 by default).
BATCH_OPS_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0)

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Kind = Literal["counter", "gauge", "histogram"]
Labels = Mapping[str, str]


class Histogram:
    """Observations counted in fixed buckets (Prometheus ``le`` semantics).

    Trio thread only (no lock). ``observe`` costs a bisect over the bounds and
    three additions, whatever the number of observations.

    Args:
        bounds: the buckets' upper bounds, finite and strictly increasing; a
            ``+Inf`` bucket is implied.

    Raises:
        ValueError: ``bounds`` is empty, not increasing, or not finite.
    """

    __slots__ = ("_bounds", "_counts", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        values = tuple(float(b) for b in bounds)
        if not values:
            raise ValueError("Expected at least one bucket bound, got none")
        if not all(math.isfinite(b) for b in values):
            raise ValueError(f"Expected finite bucket bounds, got {values!r}")
        if any(a >= b for a, b in itertools.pairwise(values)):
            raise ValueError(f"Expected strictly increasing bucket bounds, got {values!r}")
        self._bounds = values
        # One count per bucket, not cumulative (cumulated when rendered); the
        # last one is the +Inf bucket.
        self._counts = [0] * (len(values) + 1)
        #: Observations so far.
        self.count = 0
        #: Sum of the observed values.
        self.sum = 0.0

    @property
    def bounds(self) -> tuple[float, ...]:
        """The finite upper bounds, in order."""
        return self._bounds

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is >= it."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self.count += 1
        self.sum += value

    def buckets(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for each bucket, ending with ``+inf``."""
        result: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            total += n
            result.append((bound, total))
        return result


class Exposition:
    """Builds one text-format 0.0.4 page: families in the order written, each once.

    Counter names must end in ``_total`` (the Prometheus convention, which
    the text format keeps in the ``# TYPE`` line).

    Raises (every method):
        ValueError: an invalid or repeated metric name, an invalid label name,
            a counter not named ``*_total``, an ``le`` label on a histogram.
    """

    __slots__ = ("_lines", "_names")

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: set[str] = set()

    def counter(self, name: str, help_text: str, value: float) -> None:
        """One unlabelled counter."""
        self.family(name, "counter", help_text, [({}, value)])

    def gauge(self, name: str, help_text: str, value: float) -> None:
        """One unlabelled gauge."""
        self.family(name, "gauge", help_text, [({}, value)])

    def family(
        self,
        name: str,
        kind: Literal["counter", "gauge"],
        help_text: str,
        samples: Iterable[tuple[Labels, float]],
    ) -> None:
        """A counter or gauge family with one sample per label set (none is fine)."""
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"Expected a counter name ending in _total, got {name!r}")
        self._header(name, kind, help_text)
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self, name: str, help_text: str, histogram: Histogram, labels: Labels | None = None
    ) -> None:
        """A histogram: ``_bucket`` lines (cumulative, up to ``+Inf``), ``_sum``, ``_count``."""
        self._header(name, "histogram", help_text)
        base = dict(labels or {})
        if "le" in base:
            raise ValueError("Expected no 'le' label on a histogram, it is the bucket's")
        # Read the count from the buckets, not the attribute, so that the
        # page is consistent even if it were ever read between two updates.
        buckets = histogram.buckets()
        for bound, total in buckets:
            self._lines.append(f"{name}_bucket{_labels({**base, 'le': _number(bound)})} {total}")
        self._lines.append(f"{name}_sum{_labels(base)} {_number(histogram.sum)}")
        self._lines.append(f"{name}_count{_labels(base)} {buckets[-1][1]}")

    def render(self) -> str:
        """The page (ends with a newline)."""
        return "".join(line + "\n" for line in self._lines)

    def _header(self, name: str, kind: Kind, help_text: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"Expected a Prometheus metric name, got {name!r}")
        if name in self._names:
            raise ValueError(f"Metric {name!r} written twice")
        self._names.add(name)
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self._lines.append(f"# HELP {name} {escaped}")
        self._lines.append(f"# TYPE {name} {kind}")


def _number(value: float) -> str:
    if isinstance(value, int):  # bool included: True renders as 1
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in labels.items():
        if not _LABEL.match(key) or key.startswith("__"):
            raise ValueError(f"Expected a Prometheus label name, got {key!r}")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


# -- the server's page ---------------------------------------------------------


class _StoreStatistics(Protocol):
    """The parts of ``tether.storage.sql.StoreStatistics`` read here."""

    @property
    def batches(self) -> int: ...
    @property
    def ops_committed(self) -> int: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def failures(self) -> int: ...


@runtime_checkable
class _InstrumentedStore(Protocol):
    """What ``SqlStore`` offers beyond the Store API (a MemoryStore has none of it)."""

    commit_seconds: Histogram
    batch_ops: Histogram

    @property
    def unavailable_reason(self) -> str | None: ...

    def statistics(self) -> _StoreStatistics: ...


def render_metrics(ctx: ServerContext, listener: Listener | None = None) -> str:
    """The ``/metrics`` page of one server (trio thread; reads counters, never awaits).

    Cost: one pass over the live actors (for mailbox depths), the rest is
    constant.
    """
    out = Exposition()
    counters = ctx.counters
    kinds = ctx.system.registry.kinds()
    sessions = ctx.sessions.statistics()
    system = ctx.system.statistics()

    out.family(
        "tether_build_info",
        "gauge",
        "The server's version (always 1).",
        [({"version": __version__}, 1)],
    )
    _process(out)

    # connections and users
    out.gauge(
        "tether_connections",
        "Client connections open now (WebSocket connections with a connection actor).",
        kinds.get("connection", 0),
    )
    out.counter(
        "tether_connections_opened_total",
        "Client connections opened since start.",
        counters.connections_opened,
    )
    out.counter(
        "tether_connections_closed_total",
        "Client connections closed since start, for any reason.",
        counters.connections_closed,
    )
    if listener is not None:
        stats = listener.statistics()
        out.gauge(
            "tether_listener_connections",
            "TCP connections open now on the listener (HTTP and WebSocket).",
            stats.active_connections,
        )
        out.counter(
            "tether_http_requests_total",
            "HTTP requests received (WebSocket upgrade requests included).",
            stats.http_requests,
        )
        out.counter(
            "tether_connections_refused_total",
            "Connections answered 503 because max_connections was reached.",
            stats.refused,
        )
        out.counter(
            "tether_handshake_failures_total",
            "Refused WebSocket upgrades and failed TLS handshakes.",
            stats.handshake_failures,
        )
    out.gauge(
        "tether_users_online",
        "Users with at least one welcomed connection.",
        len(ctx.online),
    )
    out.gauge("tether_rooms_active", "Rooms with a live room actor.", kinds.get("room", 0))
    out.family(
        "tether_sessions",
        "gauge",
        "Resumable sessions held in memory, by state (live: connected; dormant: resumable).",
        [
            ({"state": "live"}, sessions["sessions"] - sessions["dormant"]),
            ({"state": "dormant"}, sessions["dormant"]),
        ],
    )

    # actors
    _actors(out, ctx, kinds)
    out.counter(
        "tether_actor_failures_total",
        "Actors that stopped because a handler raised.",
        system.failures_total,
    )
    out.counter(
        "tether_actor_dropped_messages_total",
        "Messages dropped on a full mailbox (timer messages, cross-thread tells).",
        system.dropped_total,
    )

    # traffic
    out.counter(
        "tether_messages_in_total",
        "msg.send requests accepted by rooms (before storage; retries included).",
        counters.messages_in,
    )
    out.counter(
        "tether_messages_out_total",
        "Committed messages pushed by rooms (each counted once, whatever the members).",
        counters.messages_out,
    )
    out.counter("tether_frames_in_total", "Frames received from clients.", counters.frames_in)
    out.counter("tether_frames_out_total", "Frames sent to clients.", counters.frames_out)
    out.counter(
        "tether_presence_events_total", "Presence changes announced.", counters.presence_events
    )
    out.counter(
        "tether_replayed_messages_total",
        "Messages replayed to resuming connections.",
        counters.replayed_messages,
    )
    out.counter(
        "tether_sessions_resumed_total",
        "Connections that resumed a session (welcome.resumed true).",
        counters.sessions_resumed,
    )
    out.counter(
        "tether_rooms_resumed_total",
        "Rooms resumed by resuming connections.",
        counters.rooms_resumed,
    )
    out.histogram(
        "tether_fanout_latency_seconds",
        "Time from a message's commit result reaching its room to its push into the "
        "members' outboxes.",
        counters.fanout_seconds,
    )

    # trouble
    out.counter(
        "tether_slow_consumers_total",
        "Connections closed because their outbound queue overflowed (close 3001).",
        counters.slow_consumers,
    )
    out.counter(
        "tether_heartbeat_timeouts_total",
        "Connections closed as silent for heartbeat_timeout (close 3002).",
        counters.heartbeat_timeouts,
    )
    out.counter(
        "tether_protocol_errors_total",
        "Invalid frames and protocol violations from clients.",
        counters.protocol_errors,
    )
    out.counter(
        "tether_auth_failures_total",
        "hello frames with a bad or expired token.",
        counters.auth_failures,
    )
    out.counter(
        "tether_plugin_failures_total",
        "Plugin crashes (each plugin is restarted with backoff).",
        counters.plugin_failures,
    )

    # storage
    writer = ctx.presence_writer
    out.gauge(
        "tether_presence_writes_pending",
        "Presence values (users, last_seen, online devices) waiting to be written.",
        writer.pending,
    )
    out.counter(
        "tether_presence_write_failures_total",
        "Presence flush rounds that storage failed (retried with backoff).",
        writer.failures,
    )
    _storage(out, ctx.store)
    _media(out, ctx)
    return out.render()


#: ``worker.stats`` counter → (metric name, help); see ``MediaPool.counters``.
_MEDIA_COUNTERS = (
    ("cpu_s", "tether_media_cpu_seconds_total", "CPU seconds used by the media workers."),
    ("rx_packets", "tether_media_received_packets_total", "RTP/RTCP packets received."),
    ("tx_packets", "tether_media_sent_packets_total", "RTP/RTCP packets sent (forwarded)."),
    ("rx_bytes", "tether_media_received_bytes_total", "Media bytes received."),
    ("tx_bytes", "tether_media_sent_bytes_total", "Media bytes sent."),
    ("rtx_sent", "tether_media_retransmitted_packets_total", "Packets resent (RTX) on NACK."),
    ("nacks_received", "tether_media_nacks_received_total", "NACKs received from subscribers."),
    ("plis_sent", "tether_media_keyframe_requests_total", "Keyframe requests sent to publishers."),
    ("hook_errors", "tether_media_packet_errors_total", "Packets whose handling raised."),
    ("dropped_packets", "tether_media_dropped_packets_total", "Packets dropped by the workers."),
)


def _media(out: Exposition, ctx: ServerContext) -> None:
    """Calls and media workers (the worker figures are polled every few seconds)."""
    counters = ctx.counters
    out.gauge("tether_calls_active", "Rooms with a call going on.", len(ctx.calls))
    out.gauge("tether_call_participants", "Participants in calls now.", counters.call_participants)
    out.counter(
        "tether_call_joins_total", "Call participants joined since start.", counters.call_joins
    )
    out.counter(
        "tether_call_restarts_total",
        "Calls moved to a fresh router because their media worker was lost.",
        counters.call_restarts,
    )
    pool = ctx.media
    health = [] if pool is None else pool.health()
    out.gauge("tether_media_workers", "Media worker processes configured.", len(health))
    out.gauge(
        "tether_media_workers_live",
        "Media workers up and answering.",
        sum(1 for w in health if w["live"]),
    )
    out.counter(
        "tether_media_worker_restarts_total",
        "Media worker processes restarted after they exited or broke.",
        sum(int(w["restarts"]) for w in health),
    )
    if pool is None:
        return
    totals = pool.counters()
    for key, name, help_text in _MEDIA_COUNTERS:
        out.counter(name, help_text, totals[key])


def _actors(out: Exposition, ctx: ServerContext, kinds: Mapping[str, int]) -> None:
    depth: dict[str, int] = dict.fromkeys(kinds, 0)
    deepest: dict[str, int] = dict.fromkeys(kinds, 0)
    peak: dict[str, int] = dict.fromkeys(kinds, 0)
    for ref in ctx.system.registry:
        # The runtime's own accessors, not ``ref.statistics()``: that builds a
        # 15-field snapshot per actor, and a scrape must stay cheap with
        # 100k connection actors on the same thread as the traffic.
        kind = ref.kind
        d = ref._mailbox_depth()
        depth[kind] = depth.get(kind, 0) + d
        if d > deepest.get(kind, 0):
            deepest[kind] = d
        if ref._peak > peak.get(kind, 0):
            peak[kind] = ref._peak
    names = sorted(depth)
    out.family(
        "tether_actors",
        "gauge",
        "Live actors, by kind.",
        [({"kind": k}, kinds.get(k, 0)) for k in names],
    )
    out.family(
        "tether_mailbox_messages",
        "gauge",
        "Messages waiting in the mailboxes of live actors, summed by kind.",
        [({"kind": k}, depth[k]) for k in names],
    )
    out.family(
        "tether_mailbox_max_messages",
        "gauge",
        "The deepest mailbox of a live actor now, by kind.",
        [({"kind": k}, deepest.get(k, 0)) for k in names],
    )
    out.family(
        "tether_mailbox_peak_messages",
        "gauge",
        "The deepest any live actor's mailbox has been since that actor started, by kind.",
        [({"kind": k}, peak.get(k, 0)) for k in names],
    )


def _storage(out: Exposition, store: object) -> None:
    if not isinstance(store, _InstrumentedStore):
        return  # e.g. a MemoryStore in tests: nothing to report
    stats = store.statistics()
    out.gauge(
        "tether_storage_healthy",
        "1 while storage accepts writes, 0 from a failed write transaction until one commits.",
        int(store.unavailable_reason is None),
    )
    out.gauge(
        "tether_storage_queued_writes",
        "Writes queued for the group committer, not yet in a transaction.",
        stats.queue_depth,
    )
    out.counter("tether_storage_batches_total", "Write transactions committed.", stats.batches)
    out.counter(
        "tether_storage_batch_failures_total",
        "Write transactions that failed as a whole (database unavailable); none of their "
        "writes was committed.",
        stats.failures,
    )
    out.counter(
        "tether_storage_writes_committed_total",
        "Writes settled by committed transactions.",
        stats.ops_committed,
    )
    out.histogram(
        "tether_storage_commit_duration_seconds",
        "Duration of one write transaction, committed or failed (thread hop included).",
        store.commit_seconds,
    )
    out.histogram(
        "tether_storage_batch_writes",
        "Writes per transaction (group commit), committed or failed.",
        store.batch_ops,
    )


def _process(out: Exposition) -> None:
    import psutil  # noqa: PLC0415 - a dependency already (tether bench); imported on first scrape

    process = psutil.Process()
    with process.oneshot():
        times = process.cpu_times()
        rss = process.memory_info().rss
        started = process.create_time()
        fds = process.num_fds() if hasattr(process, "num_fds") else None
    out.counter(
        "process_cpu_seconds_total",
        "User and system CPU time of the process.",
        times.user + times.system,
    )
    out.gauge("process_resident_memory_bytes", "Resident memory of the process.", rss)
    out.gauge("process_start_time_seconds", "Start of the process, Unix time.", started)
    if fds is not None:
        out.gauge("process_open_fds", "Open file descriptors.", fds)
