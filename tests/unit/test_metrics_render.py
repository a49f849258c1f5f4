"""tether.metrics: the fixed-bucket histogram and the text-format writer.

Pages are checked with the strict parser of ``tether.testing.prometheus``,
itself checked here against pages that break the format.
"""

from __future__ import annotations

import math

import pytest
import trio

from tether.actors import open_actor_system
from tether.actors.context import PresenceWriter, ServerContext
from tether.config import ServerConfig
from tether.metrics import CONTENT_TYPE, Exposition, Histogram, render_metrics
from tether.storage.memory import MemoryStore
from tether.testing.prometheus import ExpositionError, parse_exposition
from tether.transport.auth import TokenVerifier
from tether.transport.protocol.connection import Limits


def test_histogram_counts_each_value_in_the_first_bucket_at_or_above_it() -> None:
    h = Histogram([0.1, 1.0, 10.0])
    for value in (0.0, 0.1, 0.5, 1.0, 1.0001, 10.0, 11.0, 1e9):
        h.observe(value)
    # le semantics: a value equal to a bound counts in that bound's bucket
    assert h.buckets() == [(0.1, 2), (1.0, 4), (10.0, 6), (math.inf, 8)]
    assert h.count == 8
    assert h.sum == pytest.approx(0.0 + 0.1 + 0.5 + 1.0 + 1.0001 + 10.0 + 11.0 + 1e9)
    assert h.bounds == (0.1, 1.0, 10.0)


def test_an_empty_histogram_has_zero_everywhere() -> None:
    assert Histogram([1, 2]).buckets() == [(1.0, 0), (2.0, 0), (math.inf, 0)]


@pytest.mark.parametrize("bounds", [[], [1.0, 1.0], [2.0, 1.0], [1.0, math.inf], [math.nan]])
def test_histogram_bounds_must_be_finite_and_increasing(bounds: list[float]) -> None:
    with pytest.raises(ValueError, match="bucket bound"):
        Histogram(bounds)


def test_a_page_with_every_kind_parses_and_round_trips_values() -> None:
    h = Histogram([0.005, 0.5])
    for value in (0.001, 0.002, 0.1, 3.0):
        h.observe(value)
    out = Exposition()
    out.counter("x_requests_total", "Requests.", 7)
    out.gauge("x_temperature_celsius", "A float gauge.", 21.5)
    out.family("x_actors", "gauge", "By kind.", [({"kind": "room"}, 3), ({"kind": "user"}, 0)])
    out.family("x_empty", "gauge", "No samples at all is fine.", [])
    out.histogram("x_latency_seconds", "Latency.", h)
    out.histogram("x_labelled_seconds", "Labelled.", Histogram([1.0]), {"lane": "write"})
    out.gauge("x_inf", "Infinite.", math.inf)
    text = out.render()

    page = parse_exposition(text)
    assert list(page.families) == [
        "x_requests_total",
        "x_temperature_celsius",
        "x_actors",
        "x_empty",
        "x_latency_seconds",
        "x_labelled_seconds",
        "x_inf",
    ]
    assert page.families["x_requests_total"].kind == "counter"
    assert page.value("x_requests_total") == 7
    assert page.value("x_temperature_celsius") == 21.5
    assert page.value("x_actors", kind="room") == 3
    assert page.value("x_latency_seconds_bucket", le="0.005") == 2
    assert page.value("x_latency_seconds_bucket", le="0.5") == 3
    assert page.value("x_latency_seconds_bucket", le="+Inf") == 4
    assert page.value("x_latency_seconds_sum") == pytest.approx(3.103)
    assert page.histogram_count("x_latency_seconds") == 4
    assert page.value("x_labelled_seconds_count", lane="write") == 0
    assert page.value("x_inf") == math.inf
    assert "x_requests_total 7\n" in text  # integers stay integers
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_help_and_label_values_are_escaped() -> None:
    out = Exposition()
    out.family("x_odd", "gauge", 'back\\slash\nnewline "quotes"', [({"v": 'a"b\\c\nd'}, 1)])
    text = out.render()
    assert '# HELP x_odd back\\\\slash\\nnewline "quotes"\n' in text
    assert 'x_odd{v="a\\"b\\\\c\\nd"} 1\n' in text
    page = parse_exposition(text)
    assert page.families["x_odd"].help == 'back\\slash\nnewline "quotes"'
    assert page.value("x_odd", v='a"b\\c\nd') == 1


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda o: o.counter("x_requests", "no _total", 1), "_total"),
        (lambda o: o.gauge("0bad", "name", 1), "metric name"),
        (lambda o: o.gauge("x-dash", "name", 1), "metric name"),
        (lambda o: o.family("x_g", "gauge", "h", [({"0k": "v"}, 1)]), "label name"),
        (lambda o: o.family("x_g", "gauge", "h", [({"__k": "v"}, 1)]), "label name"),
        (lambda o: o.histogram("x_h", "h", Histogram([1.0]), {"le": "1"}), "'le'"),
    ],
)
def test_the_writer_refuses_what_prometheus_would(write: object, message: str) -> None:
    assert callable(write)
    with pytest.raises(ValueError, match=message):
        write(Exposition())


def test_a_family_is_written_once() -> None:
    out = Exposition()
    out.gauge("x_g", "h", 1)
    with pytest.raises(ValueError, match="twice"):
        out.gauge("x_g", "h", 2)


GOOD = """\
# HELP a_total A.
# TYPE a_total counter
a_total 1
# HELP h_seconds H.
# TYPE h_seconds histogram
h_seconds_bucket{le="0.1"} 1
h_seconds_bucket{le="+Inf"} 2
h_seconds_sum 0.6
h_seconds_count 2
"""


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        (GOOD.replace("a_total 1\n", "a_total 1 1700000000\n"), "malformed"),  # timestamp
        (GOOD.replace("# HELP a_total A.\n", ""), "TYPE without its HELP"),
        (GOOD.replace("# TYPE a_total counter\n", ""), "outside a family"),
        ("a_total 1\n" + GOOD, "outside a family"),
        (GOOD.replace("a_total 1", "a_total -1"), "negative"),
        (GOOD.replace("a_total 1", "a_total one"), "malformed value"),
        (GOOD.replace("a_total 1", "b_total 1"), "does not belong"),
        (GOOD.replace("a_total 1", 'a_total{x="1",x="2"} 1'), "repeated label"),
        (GOOD.replace("a_total 1", "a_total{x=1} 1"), "malformed labels"),
        (GOOD.replace("a_total", "a_count"), "_total"),
        (GOOD + "\n", "blank line"),
        (GOOD[:-1], "newline"),
        (GOOD.replace("# HELP h_seconds H.", "# h_seconds H."), "neither HELP nor TYPE"),
        (GOOD.replace('le="+Inf"} 2', 'le="+Inf"} 0'), "cumulative"),
        (GOOD.replace('le="+Inf"', 'le="10"'), "+Inf"),
        (GOOD.replace('le="0.1"', 'le="+Inf"', 1).replace('le="+Inf"} 2', 'le="0.1"} 2'), "le"),
        (GOOD.replace("h_seconds_count 2", "h_seconds_count 3"), "_count"),
        (GOOD.replace("h_seconds_sum 0.6\n", ""), "_sum or _count"),
        (GOOD + "# HELP a_total A.\n# TYPE a_total counter\n", "repeated"),
        (GOOD.replace("# TYPE a_total", "# HELP a_total again\n# TYPE a_total"), "repeated"),
    ],
)
def test_the_test_parser_rejects_broken_pages(broken: str, why: str) -> None:
    parse_exposition(GOOD)  # the baseline is fine
    with pytest.raises(ExpositionError, match=why.replace("+", r"\+")):
        parse_exposition(broken)


async def test_the_server_page_without_store_statistics() -> None:
    """A store without statistics (MemoryStore) leaves the storage families out."""
    store = MemoryStore()
    config = ServerConfig(secret="s" * 32)
    with trio.fail_after(10):
        async with open_actor_system(name="t") as system:
            ctx = ServerContext(
                config=config,
                system=system,
                verifier=TokenVerifier(b"s" * 32),
                store=store,
                server_version="test",
                presence_writer=PresenceWriter(store),
                protocol_limits=Limits(),
            )
            ctx.counters.fanout_seconds.observe(0.002)
            ctx.counters.plugin_failures += 2
            page = parse_exposition(render_metrics(ctx))
    assert not [name for name in page.families if name.startswith("tether_storage_")]
    assert "tether_listener_connections" not in page.families  # no listener given
    assert page.value("tether_plugin_failures_total") == 2
    assert page.value("tether_fanout_latency_seconds_bucket", le="0.0025") == 1
    assert page.value("tether_fanout_latency_seconds_bucket", le="0.001") == 0
    assert page.value("tether_connections") == 0
