"""The integration, reliability and security tests, N times in a row, each from a fresh clone.

Each run clones ``--branch`` of ``--repo`` into a new temporary folder (with ``../shared`` beside it,
a link to the shared data, as a CI checkout has), sources scripts/env.sh there (the cached base
environment is reused; the clone gets its own thin .venv), starts its OWN PostgreSQL, Redis and
Kafka on private ports and state folders (never the shared development services), runs pytest
on tests/integration tests/reliability tests/security with a JUnit report, stops its services and
records the failing tests by name. The results file is rewritten after every run, so a loop cut
short by its deadline still says honestly how many runs it completed.

    nice -n 10 python benchmarks/ci_loop.py --runs 10 --deadline 14:50
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
SUITES = ["tests/integration", "tests/reliability", "tests/security"]
# services of the loop (shared: 254xx/263xx/290xx; fault rig: 255xx/264xx/291xx; soak: 256xx/265xx/292xx)
CI_PORTS = {"LINEINSPECT_PG_PORT": "25832", "LINEINSPECT_REDIS_PORT": "26779", "LINEINSPECT_KAFKA_PORT": "29492"}
FAULT_PORTS = {"LINEINSPECT_FAULT_PG_PORT": "25932", "LINEINSPECT_FAULT_REDIS_PORT": "26879",
               "LINEINSPECT_FAULT_KAFKA_PORT": "29592"}


def failures_from_junit(path: Path) -> list[dict[str, str]]:
    """Failed and errored test cases of a JUnit XML report, by node name."""
    out = []
    if not path.exists():
        return [{"test": "<no junit report: pytest did not finish>", "kind": "error", "message": ""}]
    for case in ET.parse(path).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                text = (el.get("message") or "") + "\n" + (el.text or "")
                out.append({"test": name, "kind": kind, "message": text[:4000]})
    return out


def junit_counts(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def one_run(i: int, args: argparse.Namespace, cache: Path, deadline: float | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"li-ci-{i}-"))
    clone = tmp / "lineinspect"
    t0 = time.monotonic()
    try:
        subprocess.run(["git", "clone", "-q", "--branch", args.branch, str(args.repo), str(clone)], check=True)
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        (tmp / "shared").symlink_to(args.shared)
        junit = tmp / "junit.xml"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LINEINSPECT_", "VIRTUAL_ENV", "PYTHONPATH"))}
        env.update(CI_PORTS)
        env.update(FAULT_PORTS)
        env.update({"LINEINSPECT_CACHE": str(cache), "CI": "1",
                    "LINEINSPECT_SERVICES_DIR": str(cache / "ci-loop-services"),
                    "LINEINSPECT_PG_DIR": f"/var/tmp/lineinspect-ci-loop-pg-{os.getuid()}",
                    "LINEINSPECT_FAULT_SERVICES_DIR": str(cache / "ci-loop-fault-services"),
                    "LINEINSPECT_FAULT_PG_DIR": f"/var/tmp/lineinspect-ci-loop-faults-pg-{os.getuid()}"})
        script = f"""
set -euo pipefail
source scripts/env.sh
bash deploy/services.sh start
trap 'bash deploy/services.sh stop || true' EXIT
eval "$(bash deploy/services.sh env)"
set +e
nice -n 10 python -m pytest {' '.join(SUITES)} -q -p no:cacheprovider --junitxml={junit} {args.pytest_args}
echo "pytest exit $?"
"""
        log = tmp / "run.log"
        limit = args.run_timeout if deadline is None else min(args.run_timeout, deadline - time.time())
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", script], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # pytest, its consumers; the trap stops the services
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                subprocess.run(["bash", "deploy/services.sh", "stop"], cwd=clone, env=env, capture_output=True,
                               check=False, timeout=180)
                cut = deadline is not None and limit < args.run_timeout
                return {"run": i, "commit": commit, "seconds": round(time.monotonic() - t0, 1), "incomplete": cut,
                        "failures": [] if cut else [{"test": "<run timed out>", "kind": "error",
                                                     "message": f"over {args.run_timeout} s"}],
                        "junit_so_far": junit_counts(junit)}
        text = log.read_text(errors="replace")
        fails = failures_from_junit(junit)
        if proc.returncode != 0 and not fails:
            fails = [{"test": "<harness>", "kind": "error", "message": text[-500:]}]
        return {"run": i, "commit": commit, "seconds": round(time.monotonic() - t0, 1), "counts": junit_counts(junit),
                "failures": fails, "tail": text.strip().splitlines()[-1:] if text.strip() else []}
    except subprocess.TimeoutExpired:
        return {"run": i, "seconds": round(time.monotonic() - t0, 1),
                "failures": [{"test": "<run timed out>", "kind": "error", "message": f"over {args.run_timeout} s"}]}
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--repo", type=Path, default=Path("/work/main"))
    ap.add_argument("--branch", default="main")
    ap.add_argument("--shared", type=Path, default=Path("/work/shared"))
    ap.add_argument("--deadline", default=None,
                    help="UTC HH:MM: start no run that would not end by then (judged by the longest run so far)")
    ap.add_argument("--run-timeout", type=int, default=3600)
    ap.add_argument("--pytest-args", default="")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary clone")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ci_loop.json")
    args = ap.parse_args()
    cache = Path(os.environ.get("LINEINSPECT_CACHE", Path.home() / ".cache" / "lineinspect"))
    deadline = None
    if args.deadline:
        hh, mm = (int(x) for x in args.deadline.split(":"))
        now = dt.datetime.now(dt.UTC)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    runs: list[dict[str, Any]] = []
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    stopped_by = "runs"
    cut_runs: list[dict[str, Any]] = []
    def write(stopped_by: str) -> None:
        failed = [r for r in runs if r["failures"]]
        res = {
            "suites": SUITES, "branch": args.branch, "repo": str(args.repo), "started_utc": started,
            "requested_runs": args.runs, "runs": len(runs), "failures": len(failed),
            "failed_tests": sorted({f["test"] for r in failed for f in r["failures"]}),
            "stopped_by": stopped_by, "cut_by_deadline": cut_runs,
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()), "per_run": runs,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")

    for i in tqdm(range(1, args.runs + 1), desc="ci runs", file=sys.stderr):
        longest = max((r["seconds"] for r in runs), default=0.0)
        if deadline is not None and time.time() + longest > deadline:
            stopped_by = "deadline"
            break
        run = one_run(i, args, cache, deadline)
        if run.get("incomplete"):  # cut by the deadline: not a run, not a failure
            stopped_by = "deadline"
            cut_runs.append(run)
            break
        runs.append(run)
        write("in progress")
    write(stopped_by)
    print(args.out.read_text() if args.out.exists() else "no run started")


if __name__ == "__main__":
    main()
