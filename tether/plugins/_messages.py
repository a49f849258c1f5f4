"""Internal messages between the plugin host and the rooms (never seen by plugins)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.actors import Future
    from tether.plugins.api import Posted


@dataclass(frozen=True, slots=True)
class PluginPost:
    """To a RoomActor: store ``body`` from the bot user ``user`` and push it.

    The room resolves ``reply`` with a :class:`~tether.plugins.api.Posted` or
    fails it with a :class:`~tether.plugins.api.PostError`.
    """

    user: str
    user_name: str
    body: Any
    cid: str
    reply: Future[Posted]
