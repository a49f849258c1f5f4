"""``tether.web.static_response``: the SDK and web app files, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether.web as web
from tether.web import static_response


def test_serves_the_sdk_modules_as_javascript() -> None:
    for name in ("msgpack.js", "client.js", "shared.js"):
        response = static_response(f"/sdk/{name}")
        assert response is not None, name
        assert response.status == 200
        assert response.content_type == "application/javascript; charset=utf-8"
        assert response.body == (web.WEB_ROOT / "sdk" / name).read_bytes()
        headers = dict(response.headers)
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["ETag"].startswith('"')
        assert len(headers["ETag"]) == 34
    types = static_response("/sdk/index.d.ts")
    assert types is not None
    assert types.content_type.startswith("application/typescript")


@pytest.mark.parametrize(
    "path",
    [
        "/sdk/../__init__.py",
        "/sdk/..%2f__init__.py",
        "/sdk/",
        "/sdk//client.js",
        "/sdk/./client.js",
        "/sdk/missing.js",
        "/sdk/.hidden.js",
        "/sdk\\..\\__init__.py",
        "/sdk/..\\__init__.py",
        "/sdk/client.js\x00.png",
        "/__init__.py",
        "/web/sdk/client.js",
        "/app/../sdk/client.js",
        "/healthz",
        "/ws",
        "/sdkclient.js",
    ],
)
def test_refuses_everything_else(path: str) -> None:
    assert static_response(path) is None


def test_index_and_app_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "sdk").mkdir()
    (tmp_path / "app" / "index.html").write_text("<!doctype html><title>tether</title>")
    (tmp_path / "app" / "style.css").write_text("body{}")
    (tmp_path / "app" / "notes.txt").write_text("not served: unknown type")
    (tmp_path / "secret.js").write_text("outside the mounted trees")
    (tmp_path / "sdk" / "escape.js").symlink_to(tmp_path / "secret.js")
    (tmp_path / "sdk" / "sub").mkdir()
    monkeypatch.setattr(web, "WEB_ROOT", tmp_path)
    index = static_response("/")
    assert index is not None
    assert index.content_type == "text/html; charset=utf-8"
    assert index.body.startswith(b"<!doctype html>")
    css = static_response("/app/style.css")
    assert css is not None
    assert css.content_type == "text/css; charset=utf-8"
    assert static_response("/app/notes.txt") is None
    assert static_response("/sdk/escape.js") is None, "a symlink out of the tree"
    assert static_response("/sdk/sub") is None, "a directory"
    assert static_response("/secret.js") is None


def test_no_index_page_yet_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "WEB_ROOT", tmp_path)
    assert static_response("/") is None
