"""Transport: the sans-I/O protocol core (``protocol``) and the trio WebSocket/HTTP server."""
