"""``lineinspect db-upgrade`` and ``lineinspect prune``."""

from __future__ import annotations

import argparse

from lineinspect.settings import Settings, redact_url


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("db-upgrade", help="create or migrate the database schema to the latest version")
    p.set_defaults(func=_db_upgrade)

    p = subparsers.add_parser("prune", help="delete inspection results older than the retention period")
    p.add_argument("--older-than-days", type=float, default=None,
                   help="age limit in days (default: LINEINSPECT_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--batch-size", type=int, default=5000, help="results deleted per transaction")
    p.set_defaults(func=_prune)


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from storage.db import upgrade

    url = settings.resolved_db_url
    rev = upgrade(url)
    print(f"database {redact_url(url)} is at revision {rev}")
    return 0


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    from lineinspect.errors import ConfigError
    from storage.db import open_engine, upgrade
    from storage.retention import prune

    days = settings.retention_days if args.older_than_days is None else args.older_than_days
    if days < 0 or args.batch_size <= 0:
        raise ConfigError("--older-than-days must be >= 0 and --batch-size > 0")
    url = settings.resolved_db_url
    upgrade(url)
    engine = open_engine(url)
    try:
        r = prune(engine, days, dry_run=args.dry_run, batch_size=args.batch_size)
    finally:
        engine.dispose()
    verb = "would delete" if r.dry_run else "deleted"
    print(f"{verb} {r.results} results ({r.masks} masks, {r.frame_images} frame images), {r.specimens} specimens, "
          f"{r.consumer_stats} consumer snapshots older than {days:g} days")
    return 0
