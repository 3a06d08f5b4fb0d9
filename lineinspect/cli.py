"""The one console script. Each package registers its own subcommands (see COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lineinspect.errors import ConfigError, ServiceUnavailable
from lineinspect.logs import setup_logging
from lineinspect.names import InvalidName, check_name
from lineinspect.redact import redact
from lineinspect.settings import load_settings

# Each module exposes ``register(subparsers)``; its parsers set ``func(args, settings) -> int``.
COMMAND_MODULES = (
    "lineinspect.demo",       # demo
    "lineinspect.config_cli", # config
    "training.cli",           # train, eval
    "training.retrain_cli",   # retrain, models, scheduler
    "ingest.cli",             # publish
    "inference.cli",          # consume
    "deploy.cli",             # export, serve-triton
    "storage.cli",            # db-upgrade, prune
    "dashboard.cli",          # dashboard
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lineinspect", description="Production-line visual inspection with INP-Former.")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (env LINEINSPECT_LOG_LEVEL)")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: surface it
                raise
            continue
        mod.register(sub)
    return p


# options that name a product, line or camera, in every command that has them (``--product`` may repeat)
NAMED_OPTIONS = ("product", "line", "camera")


def check_names(args: argparse.Namespace) -> None:
    """Refuse a product / line / camera name that a store or a file system could not hold before a command
    opens anything (otherwise a retrain job would fail half-way, or a publisher after connecting)."""
    for kind in NAMED_OPTIONS:
        value = getattr(args, kind, None)
        for v in value if isinstance(value, list) else [] if value is None else [value]:
            check_name(kind, v)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_names(args)
        settings = load_settings(log_level=args.log_level, log_json=args.log_json)
        setup_logging(settings.log_level, settings.log_json)
        return int(args.func(args, settings) or 0)
    except (ConfigError, ServiceUnavailable, InvalidName) as exc:
        print(f"lineinspect: error: {redact(str(exc))}", file=sys.stderr)  # URLs in messages may carry secrets
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        return 0
    except Exception:
        logging.getLogger("lineinspect").exception("command failed")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
