"""Static files of the browser side: the JavaScript SDK (``/sdk/``) and the web app.

The files live next to this module (``tether/web/sdk/``, ``tether/web/app/``) and
ship as package data, so a wheel and an install from a checkout serve the same
bytes. There is no build step: what is in the directory is what browsers get.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tether.transport.http import HttpResponse

#: The directory served.
WEB_ROOT = Path(__file__).resolve().parent

#: URL prefix → directory under ``WEB_ROOT``. Only these trees are reachable:
#: this module's own source never is.
_MOUNTS = {"/sdk/": "sdk", "/app/": "app"}
#: ``/`` is the web app's page.
_INDEX = ("app", "index.html")

#: Types by file name ending (the longest ending that matches wins); other files are not served.
_TYPES = {
    ".d.ts": "application/typescript; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".mjs": "application/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}

# The files change only when tether is upgraded, but a browser must not keep an
# SDK older than the server it talks to: it revalidates each time (the ETag
# lets a proxy or the browser tell a changed file quickly).
_CACHE_CONTROL = "no-cache"


def _content_type(name: str) -> str | None:
    for ending in sorted(_TYPES, key=len, reverse=True):
        if name.endswith(ending):
            return _TYPES[ending]
    return None


def _resolve(path: str) -> Path | None:
    """The file a URL path names, or None (not ours, traversal, hidden, missing)."""
    if path == "/":
        parts: list[str] = list(_INDEX)
    else:
        for prefix, directory in _MOUNTS.items():
            if path.startswith(prefix):
                parts = [directory, *path[len(prefix) :].split("/")]
                break
        else:
            return None
    for part in parts:
        # "", "." and ".." segments, hidden files and anything a filesystem could
        # read as a separator are refused outright, before touching the disk.
        if not part or part.startswith(".") or "\\" in part or "\x00" in part or ":" in part:
            return None
    candidate = WEB_ROOT.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    # A symlink pointing out of the tree is refused too.
    if not resolved.is_relative_to(WEB_ROOT / parts[0]) or not resolved.is_file():
        return None
    return resolved


def static_response(path: str) -> HttpResponse | None:
    """Serve ``path`` (a GET request's percent-decoded path) from the web files.

    Handles ``/`` (the web app's ``app/index.html``), ``/sdk/...`` and
    ``/app/...``. Returns None for every other path and for a file that does not
    exist there (the caller answers 404 as usual), and for any path that tries to
    leave these directories (``..``, hidden files, symlinks out of the tree).
    Responses carry the file's content type, ``Cache-Control: no-cache``, an
    ``ETag`` and ``X-Content-Type-Options: nosniff``.
    """
    file = _resolve(path)
    if file is None:
        return None
    content_type = _content_type(file.name)
    if content_type is None:
        return None
    try:
        body = file.read_bytes()
    except OSError:
        return None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return HttpResponse(
        200,
        body,
        content_type=content_type,
        headers=(
            ("Cache-Control", _CACHE_CONTROL),
            ("ETag", etag),
            ("X-Content-Type-Options", "nosniff"),
        ),
    )
