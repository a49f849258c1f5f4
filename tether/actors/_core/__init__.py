"""The actor runtime: pykka's API on trio. Imports nothing from tether outside itself.

Layers, bottom up: ``errors``, ``reasons``, ``statistics``, ``future`` (awaitable futures),
``envelope`` (mailbox items), ``ref`` (refs and mailboxes), ``bridge`` (cross-thread
delivery), ``timers``, ``registry``, ``dispatcher`` (runs the handlers), ``actor`` and
``thread_actor`` (the base classes), ``context`` and ``system`` (the nursery owning it
all). ``tether.actors`` re-exports the public names; nothing else imports this package.
"""
