"""``lineinspect retrain``, ``lineinspect models list|promote|rollback|reject|runs`` and ``lineinspect scheduler``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lineinspect.errors import ConfigError

if TYPE_CHECKING:  # types only: these modules are imported where they are used
    from lineinspect.settings import Settings
    from storage.registry import ModelRegistry
    from storage.store import ResultStore
    from training.retrain import RetrainOptions, RetrainResult
    from training.scheduler import JobOutcome

DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00 UTC when neither --cron nor --min-new is configured


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("retrain", help="retrain a product on its accumulated normal data, gate and promote")
    r.add_argument("--product", required=True)
    r.add_argument("--seed-from", type=Path, default=None,
                   help="first import this image folder (an MVTec category or train/good) as seed samples")
    r.add_argument("--seed-limit", type=int, default=None, help="import at most N seed images")
    r.add_argument("--import-only", action="store_true", help="with --seed-from: import, do not train")
    r.add_argument("--candidate", type=Path, default=None,
                   help="gate an already trained model directory instead of training one")
    _retrain_options(r)
    r.add_argument("--force", action="store_true", help="promote even when the gate refuses (recorded)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=run_retrain)

    m = sub.add_parser("models", help="list, promote, roll back or reject registered model versions")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="registered versions with status, threshold and gate outcome")
    ls.add_argument("--product", default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_models_list)
    pr = msub.add_parser("promote", help="make a version the active one (serving picks it up without restart)")
    pr.add_argument("--product", required=True)
    pr.add_argument("--version", required=True)
    pr.set_defaults(func=run_models_promote)
    rb = msub.add_parser("rollback", help="re-activate the previously active version")
    rb.add_argument("--product", required=True)
    rb.set_defaults(func=run_models_rollback)
    rj = msub.add_parser("reject", help="mark a candidate as rejected so it is never promoted")
    rj.add_argument("--product", required=True)
    rj.add_argument("--version", required=True)
    rj.add_argument("--reason", required=True)
    rj.set_defaults(func=run_models_reject)
    rbl = msub.add_parser("rebaseline", help="after a drift alarm: train on the frames since T (the new normal), "
                                             "gate and promote; a promotion resolves the alarm")
    rbl.add_argument("--product", required=True)
    rbl.add_argument("--since", default=None,
                     help="epoch seconds or ISO time (UTC); default: the confirmed time or the alarm's onset")
    _retrain_options(rbl)
    rbl.add_argument("--json", action="store_true")
    rbl.set_defaults(func=run_models_rebaseline)
    dd = msub.add_parser("dismiss-drift", help="close a false drift alarm without re-baselining (retraining "
                                               "resumes; its verdicts are no longer marked drifted)")
    dd.add_argument("--alarm", type=int, required=True, help="the alarm id (dashboard Drift page)")
    dd.add_argument("--by", required=True, help="who dismisses it (kept with the alarm)")
    dd.add_argument("--reason", default="")
    dd.set_defaults(func=run_models_dismiss_drift)
    rn = msub.add_parser("runs", help="recent retrain jobs (job_runs)")
    rn.add_argument("--product", default=None)
    rn.add_argument("--limit", type=int, default=20)
    rn.set_defaults(func=run_models_runs)

    s = sub.add_parser("scheduler", help="retrain products on a cron schedule or when enough new samples arrive")
    s.add_argument("--once", action="store_true", help="check every product once, run what is due, exit")
    s.add_argument("--interval-s", type=float, default=60.0, help="seconds between checks")
    s.add_argument("--cron", default=None, help="UTC cron expression (env LINEINSPECT_RETRAIN_CRON; default '0 2 * * *' "
                        "when no --min-new is set either)")
    s.add_argument("--min-new", type=int, default=None,
                   help="retrain when this many new normal samples arrived since the newest version "
                        "(env LINEINSPECT_RETRAIN_MIN_NEW)")
    s.add_argument("--backoff-s", type=float, default=600.0, help="rest after a failed/skipped job")
    s.add_argument("--lock-ttl-s", type=float, default=600.0, help="job lease length (renewed by heartbeat)")
    s.add_argument("--product", action="append", default=None, help="only these products (repeatable)")
    _retrain_options(s)
    s.set_defaults(func=run_scheduler)


def _retrain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: TrainConfig.iters)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of samples held back (calibration + gate)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--min-samples", type=int, default=20)
    p.add_argument("--max-samples", type=int, default=None, help="use only the newest N samples")
    p.add_argument("--size", type=int, default=None, help="model input size (default: the active version's)")
    p.add_argument("--backbone", default=None, help="backbone (default: the active version's)")
    p.add_argument("--anomalies", type=Path, default=None,
                   help="labelled anomalies for the gate: an MVTec category/test folder (images outside 'good')")
    p.add_argument("--flagged-as-anomalies", action="store_true",
                   help="also use live frames flagged defect (not false alarms) as PSEUDO-anomalies; "
                        "they were picked by the active model, so they favour it")
    p.add_argument("--engine", choices=("torch", "onnx"), default="torch", help="engine that scores the gate slice")
    p.add_argument("--max-fpr", type=float, default=0.10, help="gate: absolute bound on held-back FPR")
    p.add_argument("--fpr-tolerance", type=float, default=0.02, help="gate: allowed FPR rise vs the active version")
    p.add_argument("--auroc-tolerance", type=float, default=0.01, help="gate: allowed AUROC drop vs the active")
    p.add_argument("--no-progress", action="store_true")


def _options(args: argparse.Namespace, settings: Settings) -> RetrainOptions:
    from inference.model.inp_former import InpConfig
    from training.gate import GatePolicy
    from training.presets import resolve
    from training.retrain import RetrainOptions

    model = None
    if args.size is not None or args.backbone is not None:
        if args.size is not None and args.size % 32:
            raise ConfigError(f"--size must be a multiple of 32 (got {args.size})")
        base = InpConfig()
        model = InpConfig(backbone=args.backbone or base.backbone,
                          input_hw=(args.size, args.size) if args.size else base.input_hw,
                          **resolve(settings.model_preset, {}))
    try:
        policy = GatePolicy(max_fpr=args.max_fpr, fpr_tolerance=args.fpr_tolerance,
                            auroc_tolerance=args.auroc_tolerance)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout must be between 0 and 1 (got {args.holdout})")
    if args.iters is not None and args.iters < 1:
        raise ConfigError(f"--iters must be >= 1 (got {args.iters})")
    for flag, value in (("--min-samples", args.min_samples), ("--max-samples", args.max_samples)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1 (got {value})")
    return RetrainOptions(
        iters=args.iters, holdout=args.holdout, seed=args.seed, force=bool(getattr(args, "force", False)),
        min_samples=args.min_samples, max_samples=args.max_samples,
        threshold_quantile=settings.threshold_quantile, policy=policy, model=model, preset=settings.model_preset,
        engine_kind=args.engine,
        threads=settings.threads, cache_dir=str(Path(settings.home) / "cache" / "features"),
        anomalies_dir=str(args.anomalies) if args.anomalies else None,
        flagged_as_anomalies=args.flagged_as_anomalies, progress=not args.no_progress and sys.stderr.isatty())


def _open(settings: Settings) -> tuple[ResultStore, ModelRegistry]:
    from storage.registry import ModelRegistry
    from storage.store import ResultStore

    store = ResultStore.open(settings.resolved_db_url, normal_cap=settings.keep_normal_cap)
    return store, ModelRegistry(store, settings.resolved_models_dir)


def run_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from training.retrain import import_seed, retrain
    from training.scheduler import run_job

    if args.import_only and args.seed_from is None:
        raise ConfigError("--import-only needs --seed-from DIR")
    if args.candidate is not None and not (Path(args.candidate) / "weights.pt").is_file():
        raise ConfigError(f"--candidate {args.candidate} is not a model directory (no weights.pt)")
    opts = _options(args, settings)
    store, registry = _open(settings)
    try:
        if args.seed_from is not None:
            added, known = import_seed(store, args.product, args.seed_from, limit=args.seed_limit)
            print(f"{args.product}: imported {added} seed images ({known} already kept); "
                  f"{store.count_training_samples(args.product)} samples in total")
            if args.import_only:
                return 0
        holder: dict[str, Any] = {}

        def job(lock_lost: Callable[[], bool]) -> str:
            holder["result"] = retrain(store, registry, args.product, opts, candidate_dir=args.candidate,
                                       lock_lost=lock_lost)
            return holder["result"].describe()

        outcome = run_job(store.db_engine, args.product, job)
        res = holder.get("result")
        payload: dict[str, Any] = {"status": outcome.status, "detail": outcome.detail, "run_id": outcome.run_id}
        if res is not None:
            payload.update({"version": res.version, "model_status": res.status, "parent": res.parent_version,
                            "gate": res.decision.to_dict(), "candidate": res.candidate.to_dict(),
                            "active": res.active.to_dict() if res.active else None,
                            "snapshot": res.snapshot, "seconds": round(res.seconds, 2)})
        return _report(outcome, res, payload if args.json else None)
    finally:
        store.close()


def _report(outcome: JobOutcome, res: Any, payload: dict[str, Any] | None) -> int:
    """Print a retrain-like job's outcome (``payload`` as JSON, else a line and the evaluation
    table); the exit status: 0 done, 1 failed, 3 skipped, 4 the candidate was rejected."""
    if payload is not None:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(f"{outcome.status}: {outcome.detail}")
        if res is not None:
            print(_eval_table(res))
    if outcome.status == "failed":
        return 1
    if outcome.status == "skipped":
        return 3
    return 0 if res is None or res.status != "rejected" else 4


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _eval_table(res: RetrainResult) -> str:
    rows = [("candidate " + res.version, res.candidate)]
    if res.active is not None:
        rows.append(("active " + (res.parent_version or "?"), res.active))
    lines = [f"{'':<18}{'threshold':>10}{'normals':>9}{'anomalies':>10}{'FPR':>7}{'recall':>8}{'AUROC':>8}"]
    for name, e in rows:
        lines.append(f"{name:<18}{e.threshold:>10.4f}{e.n_normal:>9d}{e.n_anomalous:>10d}{_fmt(e.fpr):>7}"
                     f"{_fmt(e.recall):>8}{_fmt(e.auroc, '.4f'):>8}")
    return "\n".join(lines)


def run_models_list(args: argparse.Namespace, settings: Settings) -> int:
    store, registry = _open(settings)
    try:
        versions = registry.list(args.product)
    finally:
        store.close()
    if args.json:
        print(json.dumps([{"product": v.product, "version": v.version, "status": v.status,
                           "threshold": v.threshold, "backbone": v.backbone, "parent": v.parent_version,
                           "created_at": v.created_at, "promoted_at": v.promoted_at, "reason": v.reason,
                           "samples": v.data_snapshot.get("n"), "by_source": v.data_snapshot.get("by_source"),
                           "gate": (v.metrics.get("gate") or {}), "path": str(v.path)} for v in versions], indent=2))
        return 0
    if not versions:
        print("no registered versions" + (f" for {args.product}" if args.product else ""))
        return 0
    print(f"{'product':<16}{'version':<9}{'status':<10}{'threshold':>10}{'samples':>8}  {'parent':<8}{'FPR':>7}"
          f"{'AUROC':>8}  note")
    for v in versions:
        cand = v.metrics.get("candidate") or {}
        note = v.reason or ("forced past the gate" if v.metrics.get("forced") else "")
        print(f"{v.product:<16}{v.version:<9}{v.status:<10}{v.threshold:>10.4f}{v.data_snapshot.get('n', '-'):>8}  "
              f"{v.parent_version or '-':<8}{_fmt(cand.get('fpr')):>7}{_fmt(cand.get('auroc'), '.4f'):>8}  {note}")
    return 0


def _store_action(settings: Settings, fn: Callable[[Any, ModelRegistry], Any], refused: tuple[type[Exception], ...],
                  done: Callable[[Any], str]) -> int:
    """Run one store/registry change: a refusal (``refused``) is a one-line error and exit 2, the
    store is closed either way, and ``done(result)`` is printed on success."""
    store, registry = _open(settings)
    try:
        result = fn(store, registry)
    except refused as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
        print(f"lineinspect: error: {msg}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(done(result))
    return 0


def _registry_action(settings: Settings, fn: Callable[[ModelRegistry], Any]) -> int:
    from storage.registry import RegistryError

    return _store_action(settings, lambda _s, r: fn(r), (RegistryError,),
                         lambda info: f"{info.product} {info.version}: {info.status}")


def run_models_promote(args: argparse.Namespace, settings: Settings) -> int:
    return _registry_action(settings, lambda r: r.promote(args.product, args.version))


def run_models_rollback(args: argparse.Namespace, settings: Settings) -> int:
    return _registry_action(settings, lambda r: r.rollback(args.product))


def run_models_reject(args: argparse.Namespace, settings: Settings) -> int:
    return _registry_action(settings, lambda r: r.reject(args.product, args.version, args.reason))


def run_models_rebaseline(args: argparse.Namespace, settings: Settings) -> int:
    from training.rebaseline import parse_since, rebaseline
    from training.scheduler import run_job

    try:
        since = None if args.since is None else parse_since(args.since)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    opts = _options(args, settings)
    store, registry = _open(settings)
    try:
        holder: dict[str, Any] = {}

        def job(lock_lost: Callable[[], bool]) -> str:
            holder["result"] = rebaseline(store, registry, args.product, since, opts, lock_lost=lock_lost)
            return "re-baseline: " + holder["result"].describe()

        outcome = run_job(store.db_engine, args.product, job)
        res = holder.get("result")
        payload = {"status": outcome.status, "detail": outcome.detail, "run_id": outcome.run_id,
                   "version": res.version if res else None, "model_status": res.status if res else None}
        return _report(outcome, res, payload if args.json else None)
    finally:
        store.close()


def run_models_dismiss_drift(args: argparse.Namespace, settings: Settings) -> int:
    from storage.drift import DriftStore

    return _store_action(settings, lambda s, _r: DriftStore.of(s).dismiss(args.alarm, by=args.by, reason=args.reason),
                         (KeyError, ValueError),
                         lambda n: f"drift alarm #{args.alarm} dismissed by {args.by.strip()}; "
                                   f"{n} verdicts no longer marked drifted")


def run_models_runs(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from storage.jobs import list_runs

    store, _ = _open(settings)
    try:
        runs = list_runs(store.db_engine, args.product, limit=args.limit)
    finally:
        store.close()
    for r in runs:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["started_at"]))
        took = f"{r['finished_at'] - r['started_at']:.1f}s" if r["finished_at"] else "running"
        print(f"{r['id']:>5}  {at}Z  {r['product']:<16}{r['status']:<9}{took:>9}  {r['detail'] or ''}")
    if not runs:
        print("no retrain jobs recorded")
    return 0


def run_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from lineinspect.logs import kv
    from training.scheduler import Schedule, Scheduler

    cron = args.cron or getattr(settings, "retrain_cron", None) or os.environ.get("LINEINSPECT_RETRAIN_CRON")
    min_new = args.min_new
    if min_new is None:
        min_new = getattr(settings, "retrain_min_new", None) or (
            int(os.environ["LINEINSPECT_RETRAIN_MIN_NEW"]) if os.environ.get("LINEINSPECT_RETRAIN_MIN_NEW") else None)
    if not cron and not min_new:
        cron = DEFAULT_CRON  # a bare `lineinspect scheduler` (e.g. the compose service) retrains nightly
    try:
        schedule = Schedule(cron=cron or None, min_new=min_new, backoff_s=args.backoff_s)
    except ValueError as exc:
        raise ConfigError(f"scheduler: {exc} (use --cron and/or --min-new)") from None
    if args.interval_s <= 0:
        raise ConfigError("--interval-s must be > 0")
    opts = _options(args, settings)
    opts.progress = False
    store, registry = _open(settings)
    import logging

    logging.getLogger("lineinspect.training.scheduler").info(
        "scheduler started", extra=kv(cron=schedule.cron, min_new=schedule.min_new, interval_s=args.interval_s))
    try:
        Scheduler(store, registry, schedule, opts, products=args.product, lock_ttl_s=args.lock_ttl_s).run(
            args.interval_s, once=args.once)
    finally:
        store.close()
    return 0
