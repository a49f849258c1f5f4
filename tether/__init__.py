"""tether: a self-hosted real-time messaging and conferencing server.

The package is layered (see ``docs/design.md``): ``tether.actors`` is the actor
runtime and the user/connection actors, ``tether.transport`` the sans-I/O
protocol and the trio WebSocket/HTTP server, ``tether.storage`` persistence,
``tether.client`` the Python SDK, and ``tether.app`` wires them into a server.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("tether").addHandler(logging.NullHandler())

__all__ = ["__version__"]
