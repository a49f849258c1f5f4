"""The ``tether`` command line: serve, token, db, console, bench.

``tether serve`` runs a node on its embedded defaults (SQLite and a generated
secret in ``./tether-data``); ``tether token --user ID`` mints a client token
with the same secret; ``tether bench <scenario>`` measures; ``tether db
upgrade`` applies schema migrations (``serve`` also does it at start).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from tether import __version__
from tether.config import ConfigError, ServerConfig, load_config

#: Benchmark scenarios: name → module exposing add_arguments(parser) and run(args) -> dict.
BENCHMARKS = {
    "actors": "tether.bench.actors",
    "call": "tether.bench.call",
    "fanout": "tether.bench.fanout",
    "idle": "tether.bench.idle",
    "presence": "tether.bench.presence",
    "recovery": "tether.bench.recovery",
    "rooms": "tether.bench.rooms",
    "store": "tether.bench.store",
}


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, help="data folder (default ./tether-data)")


def _server_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8740)")
    parser.add_argument("--database", dest="database_url", help="database URL (default SQLite)")
    parser.add_argument("--tls-cert", help="PEM certificate chain for TLS")
    parser.add_argument("--tls-key", help="PEM private key for TLS")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--dev",
        action="store_const",
        const=True,
        help="accept self-issued dev:<user> identities (never on a reachable server)",
    )


def _load(args: argparse.Namespace, *fields: str) -> ServerConfig:
    overrides = {name: getattr(args, name, None) for name in ("data_dir", *fields)}
    return load_config(file=args.config, overrides=overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run a server until SIGINT/SIGTERM (a second signal stops at once)."""
    config = _load(args, "host", "port", "database_url", "tls_cert", "tls_key", "log_level", "dev")
    _setup_logging(config.log_level)
    from tether.app import Server  # noqa: PLC0415 - keep `tether token` light

    async def main() -> None:
        server = Server(config)
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        if server.ready and not server._shutdown.is_set():
                            logging.getLogger("tether").info(
                                "%s: shutting down gracefully (again to force)",
                                signal.Signals(signum).name,
                            )
                            server.request_shutdown()
                        else:
                            nursery.cancel_scope.cancel()
                            return

            nursery.start_soon(watch_signals)
            await server.run()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a client token signed with the server's secret."""
    from tether.transport.auth import TokenError, mint_token  # noqa: PLC0415

    config = _load(args)
    try:
        token = mint_token(
            config.load_secret(),
            args.user,
            name=args.name,
            ttl_s=None if args.ttl == 0 else args.ttl,
            admin=args.admin,
        )
    except TokenError as exc:
        print(f"tether token: {exc.reason}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    """Apply migrations to the configured database."""
    from tether.storage.migrate import current_revision, upgrade  # noqa: PLC0415

    config = _load(args, "database_url")
    url = config.effective_database_url
    if url.startswith("sqlite:///"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    if args.action == "upgrade":
        upgrade(url)
    print(f"database at revision {current_revision(url)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run one benchmark scenario and print its figures."""
    result: dict[str, Any] = args.bench_run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        width = max(len(k) for k in result) if result else 0
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """Watch and steer a running server through its admin API (see docs/console.md)."""
    from tether.console import tui  # noqa: PLC0415

    try:
        token = tui.resolve_token(args.token, args.token_file)
    except OSError as exc:
        print(f"tether console: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(
            "tether console: no admin token (--token, --token-file or TETHER_ADMIN_TOKEN; "
            "mint one with `tether token --admin --user NAME`)",
            file=sys.stderr,
        )
        return 2
    try:
        return tui.main(args.url, token, once=args.once, sort=args.sort, kind=args.kind)
    except ValueError as exc:
        print(f"tether console: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tether`` command."""
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a server")
    _server_args(serve)
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="mint a client token")
    _config_args(token)
    token.add_argument("--user", required=True, help="user id (the token's sub)")
    token.add_argument("--name", help="display name")
    token.add_argument(
        "--ttl", type=float, default=86400.0, help="lifetime in seconds (0: no expiry)"
    )
    token.add_argument(
        "--admin",
        action="store_true",
        help="operator token for the console's /admin/ API (--user names the operator)",
    )
    token.set_defaults(func=cmd_token)

    db = sub.add_parser("db", help="database schema")
    _config_args(db)
    db.add_argument("--database", dest="database_url", help="database URL")
    db.add_argument("action", choices=["upgrade", "current"])
    db.set_defaults(func=cmd_db)

    console = sub.add_parser("console", help="live view of a running server's actors")
    console.add_argument(
        "--url", default="http://127.0.0.1:8740", help="the server (default http://127.0.0.1:8740)"
    )
    console.add_argument("--token", help="admin token (else --token-file or TETHER_ADMIN_TOKEN)")
    console.add_argument("--token-file", type=Path, help="file whose first line is the admin token")
    console.add_argument("--once", action="store_true", help="print one snapshot and exit")
    console.add_argument(
        "--sort",
        default="mailbox",
        choices=["mailbox", "handled", "rate", "age", "failures"],
        help="actor table order (default mailbox depth)",
    )
    console.add_argument("--kind", help="show only actors of this kind")
    console.set_defaults(func=cmd_console)

    bench = sub.add_parser("bench", help="measure (see docs/operations.md)")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        scenario = scenarios.add_parser(name, help=(module.__doc__ or name).splitlines()[0])
        scenario.add_argument("--json", action="store_true", help="print one JSON object")
        module.add_arguments(scenario)
        scenario.set_defaults(func=cmd_bench, bench_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tether`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"tether: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
