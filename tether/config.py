"""Server configuration: typed settings with documented defaults.

Sources, later ones winning: built-in defaults, a TOML file (``--config``),
environment variables ``TETHER_<NAME>`` (upper-case field name), command-line
flags. Every field is documented in ``docs/configuration.md``; the defaults
are what ``tether serve`` runs with on a fresh machine: one node, SQLite in the
data folder, a secret generated on first start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "TETHER_"
SECRET_FILE = "secret.key"


class ConfigError(ValueError):
    """A configuration value is missing, ill-typed or inconsistent."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Every setting of a tether server (see docs/configuration.md).

    Durations are seconds, sizes bytes. Zero for a limit means "no limit" only
    where the field says so.
    """

    #: Address to listen on. ``0.0.0.0`` / ``::`` to accept remote clients.
    host: str = "127.0.0.1"
    #: TCP port for HTTP and WebSocket (0 picks a free port; tests use it).
    port: int = 8740
    #: The data folder: SQLite database, generated secret.
    data_dir: Path = Path("tether-data")
    #: SQLAlchemy URL; empty means SQLite at ``<data_dir>/tether.db``.
    database_url: str = ""
    #: HS256 key for client tokens (>= 32 bytes); empty means read or create
    #: ``<data_dir>/secret.key``.
    secret: str = ""
    #: Accept self-issued ``dev:<user>`` identities. Never on a reachable server.
    dev: bool = False
    #: PEM certificate and key for TLS (both or neither).
    tls_cert: str = ""
    tls_key: str = ""
    #: Reject tokens without an ``exp`` claim.
    require_token_expiry: bool = True
    #: Log level name (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"
    #: Serve Prometheus metrics at ``GET /metrics`` on the same port.
    metrics_enabled: bool = True
    #: Serve the operator console's HTTP API under ``/admin/`` (admin tokens only).
    admin_enabled: bool = True
    #: Accept ``/admin/`` requests from non-loopback peers (default: loopback only).
    admin_allow_remote: bool = False

    #: Server heartbeat: a ping every interval (with up to 10% jitter).
    heartbeat_interval: float = 15.0
    #: A connection silent for this long is closed as dead (close code 3002).
    heartbeat_timeout: float = 35.0
    #: After a user's last connection goes, wait this long before "offline".
    offline_grace: float = 35.0
    #: A connection must send ``hello`` within this many seconds (close 3005).
    hello_timeout: float = 10.0

    #: Largest frame a client may send.
    max_frame_bytes: int = 1 << 20
    #: Bytes queued to one connection before it is closed as a slow consumer.
    max_outbound_bytes: int = 4 << 20
    #: Sustained frames per second per connection, and the burst allowed.
    max_frames_per_s: float = 50.0
    frames_burst: int = 200
    #: Sustained bytes per second per connection (burst: one second's worth
    #: or one max frame, whichever is larger).
    max_bytes_per_s: int = 1 << 20
    #: Live connections one user may hold (devices and tabs together).
    max_connections_per_user: int = 32
    #: Users one connection may watch with presence.subscribe.
    max_presence_subscriptions: int = 1000
    #: Total connections the node accepts.
    max_connections: int = 100_000
    #: Seconds a graceful shutdown may take before connections are dropped.
    shutdown_timeout: float = 10.0

    #: Whose presence a client may subscribe to: "shared-rooms" (users who
    #: share a room or direct conversation with it) or "all".
    presence_visibility: str = "shared-rooms"
    #: Members of rooms up to this size are subscribed to each other's
    #: presence automatically when a client connects (0 turns it off).
    presence_auto_subscribe_max_members: int = 100
    #: A typing indicator expires this long after its last refresh.
    typing_timeout: float = 5.0
    #: Receipt pushes and writes of one room are coalesced over this interval.
    receipts_interval: float = 0.25
    #: Members one room may have (room.join / room.invite beyond: error 125).
    max_room_members: int = 10_000
    #: Messages of one room waiting for storage at once (beyond: error 103).
    max_pending_sends_per_room: int = 5_000
    #: An inactive room's actor stops after this long (its state is in storage).
    room_idle_timeout: float = 300.0
    #: Rooms one user may belong to (room.create, room.join, invites, direct
    #: rooms beyond: error 109).
    max_rooms_per_user: int = 1_000

    #: A resumable session outlives its connection by this long (seconds):
    #: a client that comes back within it gets its presence subscriptions back.
    session_ttl: float = 3600.0
    #: A resume replays at most this many messages per room; beyond, the
    #: client is told recovery is incomplete and pages history.
    resume_max_replay: int = 1_000
    #: Recent messages each active room keeps in memory to replay without
    #: reading storage.
    resume_buffer_messages: int = 256

    #: Plugins to load, in order: ``module:Class`` paths or names of entry
    #: points in the ``tether.plugins`` group (see docs/plugins.md).
    plugins: tuple[str, ...] = ()
    #: Also load every installed ``tether.plugins`` entry point.
    plugin_autoload: bool = False
    #: Per-plugin settings: plugin name → its table (``[plugin_settings.<name>]``).
    plugin_settings: Mapping[str, Mapping[str, typing.Any]] = dataclasses.field(
        default_factory=dict, hash=False
    )
    #: Seconds the message interceptors have, in all, to answer about a message.
    plugin_intercept_timeout: float = 0.5
    #: When interceptors fail or time out: "open" (store the message) or
    #: "closed" (refuse it with error 108, temporary).
    plugin_fail_policy: str = "open"

    #: Media worker processes for calls: -1 means one per spare core
    #: (``max(1, cpu_count - 1)``), 0 disables calls (``call.join`` gets 132).
    media_workers: int = -1
    #: UDP port of worker 0; worker i binds this plus i (0: ephemeral ports).
    media_udp_port: int = 40000
    #: Address the workers' UDP sockets bind to.
    media_bind_address: str = "0.0.0.0"
    #: Addresses announced to clients as ICE host candidates (empty: this
    #: host's IPv4 addresses, 127.0.0.1 included).
    media_announced_addresses: tuple[str, ...] = ()
    #: STUN servers (``stun:host:port``) given to clients and workers (default: none).
    media_stun_servers: tuple[str, ...] = ()
    #: Bandwidth cap (REMB) sent to each publisher, bits per second.
    media_max_publish_bitrate: int = 3_000_000
    #: Participants one call may have (one more: error 133).
    call_max_participants: int = 16
    #: A participant whose connection dropped stays in the call this long,
    #: waiting for a ``call.join`` from the same session (seconds).
    call_rejoin_grace: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be positive")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )
        # A grace shorter than two heartbeats would announce offline for a
        # client that merely missed one ping while reconnecting (cf. phoenix
        # tracker's validate_down_period).
        if self.offline_grace < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"offline_grace ({self.offline_grace}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together")
        if self.secret and len(self.secret.encode()) < 32:
            raise ConfigError("secret must be at least 32 bytes")
        for name in (
            "max_frame_bytes",
            "max_outbound_bytes",
            "max_connections_per_user",
            "max_connections",
            "frames_burst",
            "max_bytes_per_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_frame_bytes < 16 << 10:
            # hello carries a token of up to 8 KiB: smaller frames would lock clients out
            raise ConfigError("max_frame_bytes must be at least 16384")
        if self.max_outbound_bytes < self.max_frame_bytes:
            raise ConfigError("max_outbound_bytes must be at least max_frame_bytes")
        if self.presence_visibility not in {"shared-rooms", "all"}:
            raise ConfigError(
                f"presence_visibility: expected 'shared-rooms' or 'all', "
                f"got {self.presence_visibility!r}"
            )
        for name in ("max_rooms_per_user", "resume_max_replay"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.resume_buffer_messages < 0:
            raise ConfigError("resume_buffer_messages must be >= 0")
        for name in ("typing_timeout", "receipts_interval", "room_idle_timeout", "session_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_room_members < 2 or self.max_pending_sends_per_room < 1:
            raise ConfigError("max_room_members must be >= 2, max_pending_sends_per_room >= 1")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"log_level: unknown level {self.log_level!r}")
        self._check_plugin_settings()
        self._check_media()

    def _check_media(self) -> None:
        if self.media_workers < -1:
            raise ConfigError(f"media_workers: expected -1, 0 or more, got {self.media_workers}")
        if not 0 <= self.media_udp_port <= 65535:
            raise ConfigError(f"media_udp_port: expected 0..65535, got {self.media_udp_port}")
        if self.media_udp_port and self.media_udp_port + max(self.media_workers, 1) - 1 > 65535:
            raise ConfigError("media_udp_port: the workers' ports would pass 65535")
        if not self.media_bind_address:
            raise ConfigError("media_bind_address must not be empty")
        for name in ("media_announced_addresses", "media_stun_servers"):
            value: object = getattr(self, name)
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, str) and v for v in value
            ):
                raise ConfigError(f"{name}: expected a list of non-empty str, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for server in self.media_stun_servers:
            if not server.startswith(("stun:", "stuns:")):
                raise ConfigError(f"media_stun_servers: expected stun:host[:port], got {server!r}")
        if self.media_max_publish_bitrate < 10_000:
            raise ConfigError("media_max_publish_bitrate must be at least 10000 bits/s")
        if self.call_max_participants < 2:
            raise ConfigError("call_max_participants must be at least 2")
        if not self.call_rejoin_grace >= 0:
            raise ConfigError("call_rejoin_grace must be >= 0")

    def _check_plugin_settings(self) -> None:
        plugins: object = self.plugins
        if not isinstance(plugins, list | tuple) or not all(
            isinstance(p, str) and p for p in plugins
        ):
            raise ConfigError(f"plugins: expected a list of non-empty str, got {plugins!r}")
        # Normalized so that the frozen config holds no mutable list.
        object.__setattr__(self, "plugins", tuple(plugins))
        settings = self.plugin_settings
        if not isinstance(settings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in settings.items()
        ):
            raise ConfigError("plugin_settings: expected a table of tables (one per plugin)")
        if not self.plugin_intercept_timeout > 0:
            raise ConfigError("plugin_intercept_timeout must be positive")
        if self.plugin_fail_policy not in {"open", "closed"}:
            raise ConfigError(
                f"plugin_fail_policy: expected 'open' or 'closed', got {self.plugin_fail_policy!r}"
            )

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tether.db').resolve()}"

    def load_secret(self) -> bytes:
        """The token key: ``secret`` if set, else ``<data_dir>/secret.key``.

        The file is created (mode 0600, 32 random bytes hex-encoded) on first
        use, so ``tether serve`` and ``tether token`` on the same data folder
        agree without any set-up.
        """
        if self.secret:
            return self.secret.encode()
        path = self.data_dir / SECRET_FILE
        if path.exists():
            value = path.read_text().strip()
            if len(value) < 32:
                raise ConfigError(f"{path}: secret shorter than 32 bytes")
            return value.encode()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        return value.encode()


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(ServerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ServerConfig)}


def _coerce(name: str, raw: object, kind: type) -> object:
    """Turn a TOML or environment value into the field's type."""
    origin = typing.get_origin(kind)
    try:
        if origin is tuple:  # tuple[str, ...]: a TOML array, or comma-separated text
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError(raw)
            return tuple(i.strip() for i in items if i.strip())
        if origin is Mapping:  # a TOML table, or JSON text in the environment
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, dict):
                raise ValueError(raw)
            return value
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)  # type: ignore[call-overload]
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)  # type: ignore[arg-type]
        if kind is Path:
            return Path(str(raw)).expanduser()
        if kind is str:
            if not isinstance(raw, str | int | float):
                raise ValueError(raw)
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None
    raise ConfigError(f"{name}: unsupported type {kind!r}")  # pragma: no cover


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServerConfig:
    """Build the configuration from a TOML file, the environment and overrides.

    Args:
        file: a TOML file with top-level keys named like the fields (an
            optional ``[server]`` table is flattened too).
        env: environment (defaults to ``os.environ``); ``TETHER_PORT=9000``
            sets ``port``. ``TETHER_CONFIG`` names the file when ``file`` is None.
        overrides: values from the command line (``None`` values are skipped).

    Raises:
        ConfigError: unknown keys, ill-typed values, inconsistent settings.
    """
    env = os.environ if env is None else env
    kinds = _field_types()
    values: dict[str, object] = {}
    if file is None and env.get(ENV_PREFIX + "CONFIG"):
        file = Path(env[ENV_PREFIX + "CONFIG"])
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        server = data.pop("server", {})
        if not isinstance(server, dict):
            raise ConfigError(f"{file}: [server] must be a table")
        data.update(server)
        for key, raw in data.items():
            if key not in kinds:
                raise ConfigError(f"{file}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, kinds[key])
    for key, kind in kinds.items():
        raw_env = env.get(ENV_PREFIX + key.upper())
        if raw_env is not None and key != "config":
            values[key] = _coerce(ENV_PREFIX + key.upper(), raw_env, kind)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in kinds:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, raw, kinds[key])
    try:
        return ServerConfig(**values)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - guarded by the key checks
        raise ConfigError(str(exc)) from exc


__all__ = ["ConfigError", "ServerConfig", "load_config"]
