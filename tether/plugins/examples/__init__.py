"""Example plugins, shipped with tether and tested with it; enabled only by configuration.

* ``tether.plugins.examples.moderation:ModerationFilter``: a word-list filter
  that rejects or masks messages.
* ``tether.plugins.examples.echo_bot:EchoBot``: a bot answering ``/echo``.
"""
