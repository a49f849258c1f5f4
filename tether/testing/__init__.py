"""Test helpers for tether and for plugin/client authors (see docs/design.md)."""

from tether.testing.server import SECRET, make_config, running_server, token

__all__ = ["SECRET", "make_config", "running_server", "token"]
