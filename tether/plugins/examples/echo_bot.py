"""A bot that answers ``/echo <text>`` by posting the text back into the room.

Enable it with ``plugins = ["tether.plugins.examples.echo_bot:EchoBot"]``. It
posts as the user ``bot:echo``.
"""

from __future__ import annotations

from tether.plugins import PLUGIN_API_VERSION, Command, Plugin

USAGE = "usage: /echo <text>"


class EchoBot(Plugin):
    """Registers ``/echo`` and answers it in the room it was posted in."""

    name = "echo"
    version = "1.0"
    api_version = PLUGIN_API_VERSION
    bot_name = "Echo"

    def on_start(self) -> None:
        """Register the command (again after a restart: idempotent)."""
        self.context.register_command("echo", "repeat the text after /echo")

    def on_command(self, command: Command) -> None:
        """Post the arguments back (the post's outcome is not awaited)."""
        self.context.post(command.room, command.args or USAGE)
