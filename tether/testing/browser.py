"""What the headless-Chromium tests need, and the pytest marks that skip without it.

The browser tests (``tests/browser``) drive Debian's Chromium with
playwright-core from node; ``.ci/run`` installs both. Without them the tests
are skipped with the reason, not failed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: The browser binary (``CHROMIUM`` overrides it).
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def missing_requirements(specs_dir: Path) -> list[str]:
    """What is missing to run the node specs in ``specs_dir`` (empty: all there)."""
    return [
        reason
        for reason, absent in (
            (f"{CHROMIUM} (apt-get install chromium)", not Path(CHROMIUM).exists()),
            ("node", shutil.which("node") is None),
            (
                "tests/browser/node_modules (npm ci --prefix tests/browser)",
                not (specs_dir / "node_modules" / "playwright-core").is_dir(),
            ),
        )
        if absent
    ]


def browser_marks(specs_dir: Path) -> list[pytest.MarkDecorator]:
    """A browser test module's ``pytestmark``: slow, and skipped when something is missing."""
    missing = missing_requirements(specs_dir)
    return [
        pytest.mark.slow,
        pytest.mark.skipif(bool(missing), reason="browser test needs " + ", ".join(missing)),
    ]
