"""Finding and checking plugins: config paths, entry points of a real (fake) distribution."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

from tether.config import ConfigError, ServerConfig, load_config
from tether.plugins import PLUGIN_API_VERSION, Plugin, PluginError, ThreadPlugin
from tether.plugins.examples.echo_bot import EchoBot
from tether.plugins.examples.moderation import ModerationFilter
from tether.plugins.host import ENTRY_POINT_GROUP, load_plugins, parse_command

HERE = __name__
MODERATION = "tether.plugins.examples.moderation:ModerationFilter"
ECHO = "tether.plugins.examples.echo_bot:EchoBot"
_serial = itertools.count()


class Good(Plugin):
    name = "good"
    version = "1.0"
    api_version = PLUGIN_API_VERSION


class GoodThread(ThreadPlugin):
    name = "good-thread"
    version = "1.0"
    api_version = PLUGIN_API_VERSION


class Impostor(Plugin):
    name = "good"
    version = "2.0"
    api_version = PLUGIN_API_VERSION


class Nameless(Plugin):
    version = "1.0"
    api_version = PLUGIN_API_VERSION


class Versionless(Plugin):
    name = "versionless"
    api_version = PLUGIN_API_VERSION


class Old(Plugin):
    name = "old"
    version = "0.1"
    api_version = 0


class NotAPlugin:
    name = "nope"


def config(*plugins: str, **overrides: Any) -> ServerConfig:
    return ServerConfig(plugins=plugins, **overrides)


def fake_distribution(root: Path, entry_points: dict[str, str], source: str) -> str:
    """Install a distribution into ``root`` (a sys.path entry): a module and its entry points.

    Returns the module's name (unique per call: modules stay cached in sys.modules).
    """
    module = f"tether_fake_plugin_{next(_serial)}"
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"]
    lines += [f"{name} = {value.format(module=module)}" for name, value in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return module


PLUGIN_SOURCE = """
from tether.plugins import PLUGIN_API_VERSION, Plugin

class Packaged(Plugin):
    name = "packaged"
    version = "3.1"
    api_version = PLUGIN_API_VERSION

class Other(Plugin):
    name = "other"
    version = "1"
    api_version = PLUGIN_API_VERSION
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_no_plugins_by_default() -> None:
    assert load_plugins(ServerConfig()) == []


def test_module_paths_load_in_order_with_their_settings() -> None:
    specs = load_plugins(
        config(
            f"{HERE}:GoodThread", ECHO, MODERATION, plugin_settings={"moderation": {"words": ["x"]}}
        )
    )
    assert [(s.name, s.cls) for s in specs] == [
        ("good-thread", GoodThread),
        ("echo", EchoBot),
        ("moderation", ModerationFilter),
    ]
    assert dict(specs[2].settings) == {"words": ["x"]}
    assert dict(specs[0].settings) == {}
    with pytest.raises(TypeError):
        specs[2].settings["words"] = []  # type: ignore[index]


def test_entry_points_load_by_name(site: Path) -> None:
    module = fake_distribution(site, {"packaged": "{module}:Packaged"}, PLUGIN_SOURCE)
    [spec] = load_plugins(config("packaged"))
    assert (spec.name, spec.cls.__module__, spec.cls.version) == ("packaged", module, "3.1")
    assert spec.source == f"entry point 'packaged' of {module} 1.0 ({module}:Packaged)"


def test_autoload_takes_every_entry_point_once(site: Path) -> None:
    fake_distribution(
        site, {"packaged": "{module}:Packaged", "other": "{module}:Other"}, PLUGIN_SOURCE
    )
    assert load_plugins(config()) == []  # installed is not enabled
    specs = load_plugins(config("packaged", plugin_autoload=True))
    assert [s.name for s in specs] == ["packaged", "other"]


def test_unknown_entry_point_names_what_is_installed(site: Path) -> None:
    fake_distribution(site, {"packaged": "{module}:Packaged"}, PLUGIN_SOURCE)
    with pytest.raises(
        PluginError, match=r"'nope': not a 'module:Class' path.*installed: .*packaged"
    ):
        load_plugins(config("nope"))


def test_a_broken_entry_point_is_refused(site: Path) -> None:
    fake_distribution(site, {"broken": "{module}:Missing"}, PLUGIN_SOURCE)
    with pytest.raises(PluginError, match=r"entry point 'broken'.*cannot load"):
        load_plugins(config("broken"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("no_such_module_xyz:Thing", r"cannot import 'no_such_module_xyz'"),
        (f"{HERE}:Missing", r"has no 'Missing'"),
        (f"{HERE}:NotAPlugin", r"is not a plugin class"),
        (f"{HERE}:Nameless", r"name must be 1\.\.64 characters"),
        (f"{HERE}:Versionless", r"'versionless' .*declare a version"),
        (
            f"{HERE}:Old",
            rf"plugin 'old' 0\.1 \({HERE}:Old\) needs plugin API version 0, but this server "
            rf"provides plugin API version {PLUGIN_API_VERSION}",
        ),
    ],
)
def test_bad_plugins_are_refused(entry: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_plugins(config(entry))


def test_two_plugins_cannot_share_a_name() -> None:
    assert len(load_plugins(config(f"{HERE}:Good", f"{HERE}:Good"))) == 1
    with pytest.raises(PluginError, match=r"'good' is declared by both"):
        load_plugins(config(f"{HERE}:Good", f"{HERE}:Impostor"))


def test_settings_are_checked_at_load() -> None:
    with pytest.raises(PluginError, match=r"'moderation': invalid settings: action: expected"):
        load_plugins(config(MODERATION, plugin_settings={"moderation": {"action": "shout"}}))
    with pytest.raises(PluginError, match=r"plugin_settings\.typo: no plugin named 'typo'"):
        load_plugins(config(MODERATION, plugin_settings={"typo": {}}))


@pytest.mark.parametrize(
    "settings",
    [
        {"words": "darn"},
        {"words": [""]},
        {"mask": "**"},
        {"reason": 3},
        {"wrods": ["x"]},
    ],
)
def test_moderation_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ModerationFilter.validate_settings(settings)


def test_plugin_settings_from_toml_and_environment(tmp_path: Path) -> None:
    file = tmp_path / "tether.toml"
    file.write_text(
        f'plugins = ["{MODERATION}", "{ECHO}"]\n'
        "plugin_fail_policy = 'closed'\n"
        "[plugin_settings.moderation]\n"
        'words = ["darn"]\n'
        'action = "mask"\n'
    )
    loaded = load_config(file=file, env={"TETHER_PLUGIN_INTERCEPT_TIMEOUT": "0.25"})
    assert loaded.plugins == (MODERATION, ECHO)
    assert loaded.plugin_settings == {"moderation": {"words": ["darn"], "action": "mask"}}
    assert (loaded.plugin_fail_policy, loaded.plugin_intercept_timeout) == ("closed", 0.25)
    assert [s.name for s in load_plugins(loaded)] == ["moderation", "echo"]
    from_env = load_config(
        env={
            "TETHER_PLUGINS": f"{ECHO}, {MODERATION}",
            "TETHER_PLUGIN_SETTINGS": '{"moderation": {"words": ["x"]}}',
            "TETHER_PLUGIN_AUTOLOAD": "yes",
        }
    )
    assert from_env.plugins == (ECHO, MODERATION)
    assert from_env.plugin_settings == {"moderation": {"words": ["x"]}}
    assert from_env.plugin_autoload is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TETHER_PLUGIN_FAIL_POLICY": "ajar"}, r"plugin_fail_policy: expected 'open' or 'closed'"),
        ({"TETHER_PLUGIN_INTERCEPT_TIMEOUT": "0"}, r"plugin_intercept_timeout must be positive"),
        ({"TETHER_PLUGIN_SETTINGS": "[1]"}, r"TETHER_PLUGIN_SETTINGS: expected Mapping"),
        ({"TETHER_PLUGIN_SETTINGS": '{"a": 1}'}, r"plugin_settings: expected a table of tables"),
    ],
)
def test_invalid_plugin_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_a_config_list_becomes_a_tuple() -> None:
    assert ServerConfig(plugins=[ECHO]).plugins == (ECHO,)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="plugins: expected a list of non-empty str"):
        ServerConfig(plugins=ECHO)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        ("/echo hi", ("echo", "hi")),
        ("/Echo   hi  there ", ("echo", "hi  there")),
        ("/echo", ("echo", "")),
        ("/echo\nline two", ("echo", "line two")),
        ({"text": "/roll 2d6", "extra": 1}, ("roll", "2d6")),
        ("echo hi", None),
        (" /echo hi", None),
        ("/", None),
        ("/e!cho", None),
        ("//echo", None),
        ({"text": 5}, None),
        (["/echo"], None),
        (b"/echo", None),
    ],
)
def test_parse_command(body: Any, parsed: tuple[str, str] | None) -> None:
    assert parse_command(body) == parsed


def test_hooks_are_known_by_overriding() -> None:
    assert ModerationFilter.handles("intercept")
    assert not ModerationFilter.handles("on_message")
    assert EchoBot.handles("on_command")
    assert not EchoBot.handles("intercept")


def test_test_modules_stay_importable() -> None:
    # Plugins named as module:Class must be importable; this one is.
    assert sys.modules[HERE].Good is Good
