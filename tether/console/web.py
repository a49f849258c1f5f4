"""The admin console's web page: one static HTML file with inline JS and CSS.

The page (``tether/console/web/index.html``, shipped as package data) fetches
nothing but the server's own ``/admin/api/...``; the server serves it at
``GET /admin/``. The admin token is typed into the page, never embedded in it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from tether.transport.http import HttpResponse

__all__ = ["CONTENT_TYPE", "PATHS", "page", "response"]

CONTENT_TYPE = "text/html; charset=utf-8"
#: Where the server serves the page (``api.register_page(path, response)`` for each).
PATHS = ("/admin/", "/admin")
#: The page runs only its own inline script and talks only to its own origin.
_HEADERS = (
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


@cache
def page() -> bytes:
    """The page's bytes (read once from the installed package)."""
    return resources.files("tether.console").joinpath("web/index.html").read_bytes()


def response() -> HttpResponse:
    """``GET /admin/``: the page, with headers that keep it to its own origin."""
    return HttpResponse(200, page(), content_type=CONTENT_TYPE, headers=_HEADERS)
