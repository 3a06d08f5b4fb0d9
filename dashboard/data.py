"""Streamlit-cached access to storage: one engine / cache handle per URL (``st.cache_resource``)
and short-lived query results (``st.cache_data``), so reruns and several browser tabs share one
connection pool and a page re-queries at most once per TTL. Query logic lives in
:mod:`storage.queries`; this module only caches it and turns rows into DataFrames."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from dashboard.charts import fmt_metrics
from dashboard.imaging import accumulate_masks
from storage import queries as q
from storage.queries import Filters

log = logging.getLogger(__name__)

LIVE_TTL_S = 10        # numbers that change with every stored frame
SLOW_TTL_S = 60        # heavier aggregates that change slowly (mask accumulation, registry)


@st.cache_resource(show_spinner=False)
def db_engine(url: str) -> Engine:
    """The process-wide engine for ``url`` (WAL / busy timeout on SQLite, pre-ping on PostgreSQL)."""
    from storage.db import open_engine

    return open_engine(url)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def database_problem(url: str) -> str | None:
    """Why no page can read the database at ``url`` - not reachable, or never migrated - in words for the
    page, or ``None`` when it is ready. Checked before any page queries, so a user sees what to do rather
    than a stack trace."""
    from lineinspect.errors import ServiceUnavailable
    from lineinspect.redact import redact_url
    from storage.db import service_errors

    try:
        engine = db_engine(url)
        with service_errors(url):
            missing = q.missing_tables(engine)
    except ServiceUnavailable as exc:
        return str(exc)
    if missing:
        return (f"the database at {redact_url(url)} has no lineinspect tables yet: run `lineinspect db-upgrade` "
                "against it (a consumer or `lineinspect retrain` creates them too)")
    return None


@st.cache_resource(show_spinner=False)
def cache(url: str) -> Any | None:
    """The Redis / in-memory cache handle, or ``None`` when it cannot be opened (the pages then
    say so and fall back to the database)."""
    try:
        from lineinspect.settings import load_settings
        from storage import open_cache

        return open_cache(load_settings(cache_url=url))
    except Exception as exc:  # noqa: BLE001 - a dead cache must not take the dashboard down
        log.warning("cache unavailable: %s", type(exc).__name__)
        return None


def clear() -> None:
    """Forget cached query results (after a write such as marking a false alarm)."""
    st.cache_data.clear()


def _with(url: str, fn: Any, *args: Any, **kw: Any) -> Any:
    with db_engine(url).connect() as conn:
        return fn(conn, *args, **kw)


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def entities(url: str) -> dict[str, list[dict[str, Any]]]:
    return {"products": _with(url, q.products), "lines": _with(url, q.lines), "cameras": _with(url, q.cameras)}


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def time_bounds(url: str) -> tuple[float | None, float | None]:
    return _with(url, q.time_bounds)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def summary(url: str, f: Filters) -> q.Summary:
    return _with(url, q.summary, f)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def breakdown(url: str, f: Filters, by: str) -> pd.DataFrame:
    df = pd.DataFrame(_with(url, q.breakdown, f, by),
                      columns=["id", "name", "inspected", "defects", "false_alarms", "mean_score", "first_at", "last_at"])
    df["defect_rate"] = (df["defects"] / df["inspected"]).where(df["inspected"] > 0, 0.0)
    return df


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def trend(url: str, f: Filters, bucket_s: float, origin: float) -> list[dict[str, Any]]:
    return _with(url, q.trend, f, bucket_s, origin)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def score_histogram(url: str, f: Filters, bin_width: float) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.score_histogram, f, bin_width),
                        columns=["product_id", "bin_start", "bin_end", "count", "defects", "false_alarms"])


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def thresholds(url: str) -> dict[int, dict[str, Any]]:
    return _with(url, q.current_thresholds)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def anomalies(url: str, f: Filters, limit: int, include_false_alarms: bool) -> list[dict[str, Any]]:
    return _with(url, q.latest_anomalies, f, limit, include_false_alarms)


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False, max_entries=256)
def anomaly_images(url: str, result_id: int) -> dict[str, Any]:
    return _with(url, q.anomaly_images, result_id)


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def location_map(url: str, product_id: int, f: Filters, limit: int, grid: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Accumulated defect-location map from a bounded sample of the newest masks."""
    return accumulate_masks(_with(url, q.recent_defect_masks, product_id, f, limit), grid)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def specimen_summary(url: str, f: Filters) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.specimen_summary, f),
                        columns=["product_id", "product", "specimens", "defects", "complete", "incomplete"])


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def recent_specimens(url: str, f: Filters, limit: int) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.recent_specimens, f, limit))


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def specimen_frames(url: str, product_id: int, specimen_id: str) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.specimen_frames, product_id, specimen_id))


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def consumer_health(url: str, since: float | None, until: float | None) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.consumer_health, since, until))


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def consumer_series(url: str, bucket_s: float, since: float | None, until: float | None) -> pd.DataFrame:
    return pd.DataFrame(_with(url, q.consumer_series, bucket_s, since, until))


@st.cache_data(ttl=SLOW_TTL_S, show_spinner=False)
def model_versions(url: str, product_ids: tuple[int, ...]) -> pd.DataFrame:
    rows = _with(url, q.model_versions, product_ids)
    for r in rows:
        r["metrics"] = fmt_metrics(r["metrics"])  # '-' for a version without metrics, not '{}'
    return pd.DataFrame(rows)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def held_models(url: str) -> list[dict[str, str]]:
    """Active versions whose model directory (when visible from this host) fails verification: consumers
    hold those products' frames (inference.router.ModelHeld) until the files are repaired or another version is promoted."""
    from pathlib import Path

    from storage.registry import ModelRegistry

    out = []
    registry = ModelRegistry(db_engine(url), Path("."))  # models_dir is only used to register
    for product, info in sorted(registry.active_versions().items()):
        if not info.path.is_dir():  # models live on the consumers' hosts: only what this host sees is checked
            continue
        try:
            registry.verify(info)
        except Exception as exc:  # noqa: BLE001 - reported on the page
            out.append({"product": product, "version": info.version, "error": str(exc)[:300]})
    return out


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def triton_ready(health_url: str, timeout_s: float = 1.0) -> tuple[bool, str]:
    """GET ``/v2/health/ready``: (ready, human-readable detail)."""
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_s) as resp:  # noqa: S310 - configured http URL
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"unreachable ({reason})"


# --- drift alarms (storage/drift.py) -----------------------------------------------------------------

def _drift(url: str) -> Any:
    from storage.drift import DriftStore

    return DriftStore(db_engine(url), url)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def drift_alarms(url: str, status: str | None = None, limit: int = 200) -> list[dict]:
    """Drift alarms, newest first, with the number of verdicts they mark as drifted."""
    d = _drift(url)
    out = d.alarms(status=status, limit=limit)
    for a in out:
        a["drifted_verdicts"] = d.drifted_count(int(a["id"]))
        a["kept_frames"] = d.count_frames(int(a["id"]))
    return out


def request_rebaseline(url: str, product: str, since: float | None, by: str) -> int:
    """The operator's "this is the new normal" (the scheduler, or ``lineinspect models rebaseline``, retrains)."""
    n = _drift(url).request_rebaseline(product, since, by)
    clear()
    return n


def dismiss_drift_alarm(url: str, alarm_id: int, by: str, reason: str) -> int:
    """The operator's "this was not drift": close the alarm without a re-baseline (who and when kept);
    returns the verdicts un-flagged."""
    n = _drift(url).dismiss(alarm_id, by=by, reason=reason)
    clear()
    return n


# --- defect families (storage/families.py) ------------------------------------------------------------

def _families(url: str) -> Any:
    from storage.families import FamilyStore

    return FamilyStore(db_engine(url), url)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def family_pareto(url: str, start: float | None, end: float | None) -> pd.DataFrame:
    rows = _families(url).pareto(None, start, end)
    cols = ["product", "family", "regions", "frames", "mean_area_px", "name"]
    return pd.DataFrame(rows, columns=cols)


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def family_members(url: str, product: str, family: int, with_frames: int = 6) -> list[dict]:
    return _families(url).members(product, family, with_frames=with_frames)


def name_family(url: str, product: str, family: int, name: str | None) -> bool:
    ok = _families(url).name_family(product, family, name)
    clear()
    return ok


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def family_trend(url: str, product: str, family: int, bucket_s: float, origin: float,
                 start: float | None, end: float | None) -> list[dict]:
    return _families(url).trend(product, family, bucket_s, origin, start, end)
