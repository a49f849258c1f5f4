"""The operator console: actor inspection and control over HTTP (see ``docs/console.md``).

``tether.console.api`` serves the JSON API under ``/admin/api/`` on the server's
own port; the terminal UI and the web page are clients of it.
"""
