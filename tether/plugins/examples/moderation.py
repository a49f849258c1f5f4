"""A moderation filter: messages containing a listed word are rejected or masked.

Enable it with::

    plugins = ["tether.plugins.examples.moderation:ModerationFilter"]

    [plugin_settings.moderation]
    words = ["darn", "heck"]   # whole words, any case
    action = "mask"            # or "reject" (the default)
    mask = "*"                 # the masking character
    reason = "mind your language"  # what a rejected sender is told

It reads a body that is a str, or the ``"text"`` of a map body (other keys
are kept); other bodies pass. Edits are filtered like new messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tether.plugins import (
    PLUGIN_API_VERSION,
    Allow,
    Intercept,
    Modify,
    Plugin,
    PluginContext,
    Reject,
    Verdict,
)

ACTIONS = ("reject", "mask")
DEFAULT_REASON = "the message contains a blocked word"


class ModerationFilter(Plugin):
    """Rejects or masks messages with words from the ``words`` setting."""

    name = "moderation"
    version = "1.0"
    api_version = PLUGIN_API_VERSION

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """``words``: a list of non-empty str; ``action``: reject or mask; ``mask``: one char."""
        unknown = set(settings) - {"words", "action", "mask", "reason"}
        if unknown:
            raise ValueError(f"unknown setting {sorted(unknown)[0]!r}")
        words = settings.get("words", [])
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError("words: expected a list of non-empty str")
        if settings.get("action", "reject") not in ACTIONS:
            raise ValueError(f"action: expected 'reject' or 'mask', got {settings['action']!r}")
        mask = settings.get("mask", "*")
        if not isinstance(mask, str) or len(mask) != 1:
            raise ValueError(f"mask: expected one character, got {mask!r}")
        if not isinstance(settings.get("reason", DEFAULT_REASON), str):
            raise ValueError("reason: expected a str")

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        settings = context.settings
        words = sorted(
            {w.strip().lower() for w in settings.get("words", [])}, key=len, reverse=True
        )
        # Whole words only ("class" does not match "ass"); longest first so
        # that overlapping entries mask as much as they can.
        alternatives = "|".join(re.escape(w) for w in words)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.I) if words else None
        self.action: str = settings.get("action", "reject")
        self.mask: str = settings.get("mask", "*")
        self.reason: str = settings.get("reason", DEFAULT_REASON)

    def intercept(self, message: Intercept) -> Verdict:
        """Reject or mask the message if its text has a listed word."""
        body = message.body
        text = body.get("text") if isinstance(body, dict) else body
        if self.pattern is None or not isinstance(text, str) or not self.pattern.search(text):
            return Allow()
        if self.action == "reject":
            return Reject(self.reason)
        masked = self.pattern.sub(lambda m: self.mask * len(m.group()), text)
        return Modify({**body, "text": masked} if isinstance(body, dict) else masked)
