"""Subprotocol negotiation, and the sans-I/O layering of the protocol package.

The layering check reads the package's imports statically: it must import the
standard library only (and msgpack, in codec.py), never trio, wsproto, sockets
or the rest of tether.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tether.transport.protocol import LocalProtocolError
from tether.transport.protocol.versions import SUBPROTOCOLS, WS_PATH, negotiate

IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "threading", "subprocess"}
PACKAGE_DIR = Path(__file__).resolve().parents[3] / "tether" / "transport" / "protocol"


def test_v1_is_the_only_version() -> None:
    assert SUBPROTOCOLS == ("tether.v1",)
    assert WS_PATH == "/ws"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["tether.v1"], "tether.v1"),
        (["chat", "tether.v1"], "tether.v1"),
        (("tether.v2", "tether.v1"), "tether.v1"),
        ([], None),
        (["tether.v0", "TETHER.V1", "tether"], None),
    ],
)
def test_negotiate(offered: list[str], chosen: str | None) -> None:
    assert negotiate(offered) == chosen


def test_negotiate_refuses_a_bare_string() -> None:
    # A str is a Sequence[str]: "tether.v1" would otherwise be read as characters.
    with pytest.raises(
        LocalProtocolError, match=r"^Expected a sequence of subprotocols, got str 'tether\.v1'$"
    ):
        negotiate("tether.v1")


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports must stay inside the package (level 1: ".x").
            assert node.level <= 1, f"{path.name} imports from outside the package"
            if node.level == 0 and node.module:
                modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_modules_import_only_the_stdlib_and_msgpack(path: Path) -> None:
    allowed_third_party = {"msgpack"} if path.name == "codec.py" else set()
    for module in _imported_modules(path):
        top = module.split(".")[0]
        assert top in sys.stdlib_module_names or top in allowed_third_party, (
            f"{path.name} imports {module}"
        )
        assert top not in IO_MODULES, f"{path.name} imports {module}, which does I/O"
