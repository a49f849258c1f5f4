"""A strict parser of Prometheus text format 0.0.4, for tests of ``/metrics``.

Stricter than Prometheus itself where tether's page promises more: every
family has ``# HELP`` then ``# TYPE`` before its samples, a family's samples
are contiguous, no blank lines, no timestamps, counters are named
``*_total`` and never negative, and each histogram series has cumulative
``_bucket`` lines in increasing ``le`` order ending at ``+Inf``, then ``_sum``
and ``_count`` (equal to the ``+Inf`` bucket). Anything else raises
:class:`ExpositionError` naming the line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ExpositionError", "Family", "Page", "parse_exposition"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"# HELP ({_NAME}) (.*)\Z")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)\Z")
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_VALUE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z|[+-]Inf\Z|NaN\Z")

Labels = frozenset[tuple[str, str]]


class ExpositionError(ValueError):
    """The page breaks the format (the message names the line)."""


@dataclass
class Family:
    """One metric family: its type, help text and samples.

    ``samples`` maps (sample name, labels) to the value; for a histogram the
    sample names are ``<family>_bucket``, ``_sum`` and ``_count``.
    """

    name: str
    kind: str
    help: str
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


@dataclass
class Page:
    """A parsed page: families by name, in page order."""

    families: dict[str, Family]

    def value(self, name: str, /, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` (KeyError if absent)."""
        key = (name, frozenset(labels.items()))
        for family in self.families.values():
            if key in family.samples:
                return family.samples[key]
        raise KeyError(f"no sample {name}{labels or ''}")

    def histogram_count(self, name: str, /, **labels: str) -> float:
        """The ``_count`` of histogram ``name``."""
        return self.value(f"{name}_count", **labels)


def parse_exposition(text: str) -> Page:
    """Parse and check ``text`` (see the module docstring).

    Raises:
        ExpositionError: the first violation found.
    """
    if not text.endswith("\n"):
        raise ExpositionError("the page does not end with a newline")
    families: dict[str, Family] = {}
    current: Family | None = None
    help_for: tuple[str, str] | None = None
    for number, line in enumerate(text[:-1].split("\n"), start=1):

        def fail(why: str, number: int = number, line: str = line) -> ExpositionError:
            return ExpositionError(f"line {number}: {why}: {line!r}")

        if not line:
            raise fail("blank line")
        if line.startswith("#"):
            if match := _HELP.match(line):
                name = match[1]
                if name in families or (help_for is not None):
                    raise fail("HELP repeated or without TYPE before")
                help_for = (name, match[2])
                current = None
                continue
            if match := _TYPE.match(line):
                name, kind = match[1], match[2]
                if help_for is None or help_for[0] != name:
                    raise fail("TYPE without its HELP just before")
                if kind == "counter" and not name.endswith("_total"):
                    raise fail("counter not named *_total")
                current = families[name] = Family(name, kind, _unescape_help(help_for[1]))
                help_for = None
                continue
            raise fail("comment that is neither HELP nor TYPE")
        if current is None:
            raise fail("sample outside a family (HELP and TYPE first)")
        match = _SAMPLE.match(line)
        if not match:
            raise fail("malformed sample")
        sample_name, raw_labels, raw_value = match[1], match[2], match[3]
        allowed = (
            {f"{current.name}_bucket", f"{current.name}_sum", f"{current.name}_count"}
            if current.kind == "histogram"
            else {current.name}
        )
        if sample_name not in allowed:
            raise fail(f"sample does not belong to family {current.name}")
        labels = _parse_labels(raw_labels, fail)
        if not _VALUE.match(raw_value):
            raise fail("malformed value")
        value = float(raw_value)
        if current.kind == "counter" and not value >= 0:
            raise fail("negative or NaN counter")
        key = (sample_name, labels)
        if key in current.samples:
            raise fail("duplicate sample")
        current.samples[key] = value
    if help_for is not None:
        raise ExpositionError(f"HELP of {help_for[0]} without TYPE at the end")
    for family in families.values():
        if family.kind == "histogram":
            _check_histogram(family)
    return Page(families)


def _parse_labels(raw: str | None, fail: Callable[[str], ExpositionError]) -> Labels:
    if raw is None:
        return frozenset()
    pairs: list[tuple[str, str]] = []
    position = 0
    while True:
        match = _LABEL.match(raw, position)
        if not match:
            raise fail("malformed labels")
        name = match[1]
        if name.startswith("__"):
            raise fail("reserved label name")
        pairs.append((name, _unescape_label(match[2])))
        position = match.end()
        if position == len(raw):
            break
        if raw[position] != ",":
            raise fail("malformed labels")
        position += 1
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise fail("repeated label")
    return frozenset(pairs)


def _unescape_label(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def _unescape_help(value: str) -> str:
    return re.sub(r"\\([\\n])", lambda m: "\n" if m[1] == "n" else "\\", value)


def _check_histogram(family: Family) -> None:
    name = family.name
    series: dict[Labels, list[tuple[float, float]]] = {}
    sums: dict[Labels, float] = {}
    counts: dict[Labels, float] = {}
    # Dicts keep insertion order: buckets are checked in page order.
    for (sample, labels), value in family.samples.items():
        if sample == f"{name}_bucket":
            le = [v for k, v in labels if k == "le"]
            if len(le) != 1:
                raise ExpositionError(f"{name}: bucket without le")
            rest = frozenset((k, v) for k, v in labels if k != "le")
            if rest in sums or rest in counts:
                raise ExpositionError(f"{name}{set(rest)}: bucket after _sum or _count")
            series.setdefault(rest, []).append((float(le[0]), value))
        elif "le" in dict(labels):
            raise ExpositionError(f"{name}: le label on {sample}")
        elif sample == f"{name}_sum":
            sums[labels] = value
        else:
            counts[labels] = value
    if not series:
        raise ExpositionError(f"{name}: histogram without buckets")
    for labels, buckets in series.items():
        bounds = [b for b, _ in buckets]
        totals = [c for _, c in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ExpositionError(f"{name}: le not strictly increasing: {bounds}")
        if bounds[-1] != math.inf:
            raise ExpositionError(f"{name}: last bucket is not +Inf")
        if totals != sorted(totals):
            raise ExpositionError(f"{name}: buckets not cumulative: {totals}")
        if labels not in sums or labels not in counts:
            raise ExpositionError(f"{name}: _sum or _count missing")
        if counts[labels] != totals[-1]:
            raise ExpositionError(f"{name}: _count {counts[labels]} != +Inf bucket {totals[-1]}")
    if set(sums) != set(series) or set(counts) != set(series):
        raise ExpositionError(f"{name}: _sum or _count without buckets")
