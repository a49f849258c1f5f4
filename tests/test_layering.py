"""Import contracts between tether's layers (STYLE.md P1, ARCHITECTURE.md).

Each ``LayerRule`` names a package (a directory under the repository root) and what its
modules may import; the test reads the sources with ``ast``, so nothing is imported and
a broken module cannot hide a violation. To add a rule, append a ``LayerRule`` to
``RULES``; a rule whose package does not exist yet is skipped, not passed.

The re-export test is trio's ``test_core_is_properly_reexported`` idea: every public name
of ``tether.actors._core`` is reachable from ``tether.actors``, the only import surface.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """What the modules of one package may import.

    Attributes:
        package: dotted name of the package the rule applies to (all its modules).
        allowed_tether: dotted prefixes inside ``tether`` the package may import from.
        allowed_third_party: top-level distributions it may import (None: any).
        forbidden: top-level modules it must not import (checked even if allowed above).
        stdlib: whether the standard library is allowed.
        exempt: modules of the package the rule does not apply to.
    """

    package: str
    allowed_tether: tuple[str, ...] = ()
    allowed_third_party: frozenset[str] | None = None
    forbidden: frozenset[str] = frozenset()
    stdlib: bool = True
    exempt: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return ROOT.joinpath(*self.package.split("."))


RULES: tuple[LayerRule, ...] = (
    # The actor runtime is self-contained: trio, pykka and the standard library only.
    LayerRule(
        package="tether.actors._core",
        allowed_tether=("tether.actors._core",),
        allowed_third_party=frozenset({"trio", "pykka"}),
    ),
    # The wire protocol is sans-I/O (P2): no event loop, no sockets library, no database.
    LayerRule(
        package="tether.transport.protocol",
        allowed_tether=("tether.transport.protocol",),
        forbidden=frozenset({"trio", "wsproto", "trio_websocket", "sqlalchemy", "aiortc"}),
    ),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts)


def _modules(package: Path) -> Iterator[Path]:
    yield from sorted(package.rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line, absolute dotted module) for every import in ``path``."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            yield node.lineno, target
            # `from package import submodule` imports the submodule too
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def _violations(rule: LayerRule) -> list[str]:
    problems: list[str] = []
    for path in _modules(rule.path):
        module = _module_name(path)
        if any(module.endswith(e) for e in rule.exempt):
            continue
        for line, target in _imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top == "tether":
                allowed = any(
                    target == p or target.startswith(p + ".") for p in rule.allowed_tether
                )
                if not allowed and _is_package_or_module(target):
                    problems.append(f"{where} imports {target}")
                continue
            if top in rule.forbidden:
                problems.append(f"{where} imports forbidden {target}")
            elif top in STDLIB:
                if not rule.stdlib:
                    problems.append(f"{where} imports stdlib {target}")
            elif rule.allowed_third_party is not None and top not in rule.allowed_third_party:
                problems.append(f"{where} imports third-party {target}")
    return problems


def _is_package_or_module(dotted: str) -> bool:
    # `from tether.x import name` yields "tether.x.name" too; only report real modules
    # (names imported from an allowed module are fine, and so are their attributes).
    path = ROOT.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file() or dotted.count(".") <= 1


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.package)
def test_layer_imports(rule: LayerRule) -> None:
    if not rule.path.is_dir():
        pytest.skip(f"{rule.package} does not exist yet")
    assert _violations(rule) == []


def test_the_checker_reports_violations() -> None:
    # A stricter rule than the real one must fail on the real code: the test can fail.
    strict = LayerRule(
        package="tether.actors._core",
        allowed_tether=("tether.actors._core.errors",),
        allowed_third_party=frozenset({"trio"}),
    )
    problems = _violations(strict)
    assert any("imports third-party pykka" in p for p in problems)
    assert any("imports tether.actors._core.future" in p for p in problems)


def test_only_the_actors_package_imports_the_core() -> None:
    problems = []
    for path in _modules(ROOT / "tether"):
        module = _module_name(path)
        if module.startswith("tether.actors._core") or module == "tether.actors.__init__":
            continue
        for line, target in _imports(path):
            if target == "tether.actors._core" or target.startswith("tether.actors._core."):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert problems == [], "import the actor API from tether.actors, not tether.actors._core"


def _core_modules() -> list[str]:
    core = importlib.import_module("tether.actors._core")
    return sorted(
        f"tether.actors._core.{info.name}" for info in pkgutil.iter_modules(core.__path__)
    )


def test_core_is_properly_reexported() -> None:
    actors = importlib.import_module("tether.actors")
    public: dict[str, object] = {}
    for name in _core_modules():
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} must declare __all__"
        for symbol in module.__all__:
            public[symbol] = getattr(module, symbol)
        # Every public-looking class or function defined there is in its __all__.
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        defined = {
            node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and not node.name.startswith("_")
        }
        assert defined <= set(module.__all__), f"{name}: public but not in __all__"
    for symbol, value in public.items():
        assert getattr(actors, symbol, None) is value, f"tether.actors does not re-export {symbol}"
    assert sorted(actors.__all__) == sorted(public), "tether.actors.__all__ is exactly the core API"


def test_core_defines_what_the_api_promises() -> None:
    actors = importlib.import_module("tether.actors")
    promised = {
        "Actor",
        "ThreadActor",
        "ActorRef",
        "ActorSystem",
        "open_actor_system",
        "current_system",
        "Future",
        "wait",
        "ActorDeadError",
        "MailboxFull",
        "WouldDeadlock",
        "AskTimeout",
        "StopReason",
        "ActorStatistics",
        "TimerHandle",
        "Registry",
    }
    assert promised <= set(actors.__all__)


#: The only modules allowed to import an asyncio-based media stack (ARCHITECTURE.md:
#: "Nothing outside tether/media/ imports asyncio or aiortc"). The trio side of the
#: media package (pool, wire) is held to the same rule as everything else.
ASYNCIO_MODULES = ("tether.media.worker", "tether.media.peer", "tether.media.synthetic")
ASYNCIO_PACKAGES = ("tether.media.worker", "tether.media.testing")
ASYNCIO_STACK = frozenset({"asyncio", "aiortc", "aioice", "av", "pylibsrtp", "uvloop"})


def test_asyncio_and_aiortc_stay_in_the_media_package() -> None:
    problems: list[str] = []
    for path in _modules(ROOT / "tether"):
        module = _module_name(path)
        if module in ASYNCIO_MODULES or any(
            module == p or module.startswith(p + ".") for p in ASYNCIO_PACKAGES
        ):
            continue
        for line, target in _imports(path):
            if target.split(".")[0] in ASYNCIO_STACK:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert problems == []
