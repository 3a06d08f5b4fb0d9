"""What every page shares: the settings-derived URLs and the sidebar filters.

The entrypoint (``app.py``) renders the sidebar once per run, before the selected page, and
stores the resulting :class:`PageContext` in session state; pages read it with :func:`current`.
Keeping the widgets in the entrypoint is what makes the filters survive page switches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import streamlit as st

from dashboard import data
from lineinspect.settings import Settings, redact_url
from storage.queries import Filters

_CTX_KEY = "lineinspect_ctx"

RANGES: dict[str, float | None] = {
    "Last hour": 3600.0,
    "Last 8 hours": 8 * 3600.0,
    "Last 24 hours": 24 * 3600.0,
    "Last 7 days": 7 * 86400.0,
    "All time": None,
}
ANCHORS = ("now", "newest result")
REFRESH = {"off": None, "5 s": 5.0, "15 s": 15.0, "60 s": 60.0}
# "now" is rounded up to this many seconds so query caches keep their keys between reruns
NOW_GRANULARITY_S = 10.0


@dataclass(frozen=True)
class PageContext:
    db_url: str
    cache_url: str
    triton_health_url: str | None
    filters: Filters
    range_label: str
    refresh_s: float | None


def triton_health_url(settings: Settings) -> str | None:
    """``http://host:port/v2/health/ready`` for a Triton engine URL, else ``None`` (local engine).
    A gRPC engine URL is checked on the same host's HTTP port from the settings."""
    url = settings.engine_url
    if url.startswith("triton-http://"):
        parts = urlsplit("http://" + url[len("triton-http://"):])
        port = parts.port or settings.triton_http_port
    elif url.startswith("triton-grpc://"):
        parts = urlsplit("http://" + url[len("triton-grpc://"):])
        port = settings.triton_http_port
    else:
        return None
    return f"http://{parts.hostname or '127.0.0.1'}:{port}/v2/health/ready"


def time_window(label: str, anchor: str, now: float, newest: float | None) -> tuple[float | None, float | None]:
    """(start, end) for a range preset. ``end`` is exclusive, so the anchor is nudged past the
    newest row; "now" is rounded up so reruns within a few seconds hit the query cache."""
    if label not in RANGES:
        raise ValueError(f"unknown time range {label!r}; choose one of {list(RANGES)}")
    span = RANGES[label]
    if span is None:
        return None, None
    if anchor == "newest result":
        if newest is None:
            return None, None
        end = newest + 1.0
    elif anchor == "now":
        end = math.ceil(now / NOW_GRANULARITY_S) * NOW_GRANULARITY_S
    else:
        raise ValueError(f"unknown anchor {anchor!r}; choose one of {ANCHORS}")
    return end - span, end


def sidebar(settings: Settings) -> PageContext:
    """Render the shared sidebar filters and return the context the pages use."""
    url = settings.resolved_db_url
    ent = data.entities(url)
    with st.sidebar:
        st.caption(f"Database: `{redact_url(url)}`")
        label = st.selectbox("Time range", list(RANGES), index=2, key="range")
        anchor = st.radio("Range ends at", ANCHORS, horizontal=True, key="anchor",
                          help="'newest result' reviews a history that is not live")
        pnames = st.multiselect("Products", [p["name"] for p in ent["products"]], key="products")
        lnames = st.multiselect("Lines", [ln["name"] for ln in ent["lines"]], key="lines")
        line_ids = {ln["id"] for ln in ent["lines"] if ln["name"] in lnames}
        cam_choices = [c["name"] for c in ent["cameras"] if not line_ids or c["line_id"] in line_ids]
        cnames = st.multiselect("Cameras", cam_choices, key="cameras")
        refresh_label = st.selectbox("Auto-refresh", list(REFRESH), index=2, key="refresh")
    newest = data.time_bounds(url)[1] if anchor == "newest result" else None
    start, end = time_window(label, anchor, time.time(), newest)
    filters = Filters(
        start=start, end=end,
        product_ids=tuple(p["id"] for p in ent["products"] if p["name"] in pnames),
        line_ids=tuple(sorted(line_ids)),
        camera_ids=tuple(c["id"] for c in ent["cameras"] if c["name"] in cnames),
    )
    return PageContext(
        db_url=url, cache_url=settings.cache_url, triton_health_url=triton_health_url(settings),
        filters=filters, range_label=label, refresh_s=REFRESH[refresh_label],
    )


def publish(ctx: PageContext) -> None:
    st.session_state[_CTX_KEY] = ctx


def current() -> PageContext:
    """The context the entrypoint rendered in this run."""
    ctx = st.session_state.get(_CTX_KEY)
    if ctx is None:
        raise RuntimeError("dashboard pages run through dashboard/app.py (streamlit run dashboard/app.py)")
    return ctx


def product_names(url: str) -> dict[int, str]:
    return {p["id"]: p["name"] for p in data.entities(url)["products"]}
