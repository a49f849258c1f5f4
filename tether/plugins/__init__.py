"""Server plugins: actor classes that see events, filter messages, post and answer commands.

The public API (see ``docs/plugins.md``) is re-exported here from
``tether.plugins.api``; the loader and supervisor live in ``tether.plugins.host``
(imported by the server, not by plugins). Example plugins are in
``tether.plugins.examples``.
"""

from tether.plugins.api import (
    PLUGIN_API_VERSION,
    Allow,
    CallEvent,
    Command,
    Event,
    Intercept,
    MembershipChanged,
    MessageDeleted,
    MessageEdited,
    MessagePosted,
    Modify,
    Plugin,
    PluginBase,
    PluginContext,
    PluginError,
    Posted,
    PostError,
    PresenceChanged,
    Reject,
    ThreadPlugin,
    Verdict,
)

__all__ = [
    "PLUGIN_API_VERSION",
    "Allow",
    "CallEvent",
    "Command",
    "Event",
    "Intercept",
    "MembershipChanged",
    "MessageDeleted",
    "MessageEdited",
    "MessagePosted",
    "Modify",
    "Plugin",
    "PluginBase",
    "PluginContext",
    "PluginError",
    "PostError",
    "Posted",
    "PresenceChanged",
    "Reject",
    "ThreadPlugin",
    "Verdict",
]
