"""``lineinspect config``: print the effective settings (secrets redacted) and check them."""

from __future__ import annotations

import argparse
import json

from lineinspect.redact import redact_url
from lineinspect.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the effective settings (from LINEINSPECT_* env), secrets redacted")
    p.add_argument("--json", action="store_true", help="JSON instead of one `name = value` line each")
    p.set_defaults(func=run_config)


def run_config(args: argparse.Namespace, settings: Settings) -> int:
    d = settings.safe_dict()
    d["resolved_db_url"] = redact_url(settings.resolved_db_url)
    d["resolved_models_dir"] = str(settings.resolved_models_dir)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
    else:
        width = max(len(k) for k in d)
        for k, v in d.items():
            print(f"{k:<{width}} = {v}")
    return 0
