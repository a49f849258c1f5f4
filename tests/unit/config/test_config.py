"""Configuration loading: defaults, TOML, environment, overrides, validation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tether.config import ConfigError, ServerConfig, load_config


def test_defaults_are_valid() -> None:
    config = load_config(env={})
    assert config == ServerConfig()
    assert config.effective_database_url.startswith("sqlite:///")
    assert config.effective_database_url.endswith("tether-data/tether.db")


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    file = tmp_path / "tether.toml"
    file.write_text('port = 9000\nhost = "0.0.0.0"\n[server]\nlog_level = "DEBUG"\n')
    config = load_config(
        file=file, env={"TETHER_PORT": "9100", "TETHER_DEV": "yes"}, overrides={"port": 9200}
    )
    assert (config.port, config.host, config.log_level, config.dev) == (
        9200,
        "0.0.0.0",
        "DEBUG",
        True,
    )


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text("heartbeat_interval = 5\nheartbeat_timeout = 12\noffline_grace = 10\n")
    config = load_config(env={"TETHER_CONFIG": str(file)})
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (5.0, 12.0)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "t.toml"
    file.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'prot'$"):
        load_config(file=file, env={})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TETHER_PORT": "eighty"}, r"^TETHER_PORT: expected int, got 'eighty'$"),
        ({"TETHER_DEV": "maybe"}, r"^TETHER_DEV: expected bool, got 'maybe'$"),
        ({"TETHER_PORT": "70000"}, r"^port: expected 0..65535, got 70000$"),
        (
            {"TETHER_OFFLINE_GRACE": "20"},
            r"^offline_grace \(20.0\) must be at least twice heartbeat_interval \(15.0\)$",
        ),
        ({"TETHER_HEARTBEAT_TIMEOUT": "10"}, r"must exceed heartbeat_interval"),
        ({"TETHER_TLS_CERT": "c.pem"}, r"^tls_cert and tls_key go together$"),
        ({"TETHER_SECRET": "short"}, r"^secret must be at least 32 bytes$"),
    ],
)
def test_invalid_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_secret_generated_once_and_private(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "data")
    first = config.load_secret()
    assert len(first) == 64
    assert config.load_secret() == first
    mode = (tmp_path / "data" / "secret.key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_explicit_secret_wins(tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path, secret="s" * 32)
    assert config.load_secret() == b"s" * 32
    assert not (tmp_path / "secret.key").exists()


def test_every_setting_is_documented() -> None:
    import dataclasses  # noqa: PLC0415

    doc = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(ServerConfig) if f"`{f.name}`" not in doc]
    assert missing == []
