"""System health: consumer throughput, batch sizes, latency, lag and DLQ; Triton; the cache; models."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import charts, context, data
from lineinspect.settings import redact_url

ctx = context.current()
st.title("System health")
f = ctx.filters


@st.fragment(run_every=ctx.refresh_s)
def drift() -> None:
    st.subheader("Drift alarms")
    open_ = data.drift_alarms(ctx.db_url, "open")
    if not open_:
        st.caption("No open drift alarm.")
        return
    st.warning(f"{len(open_)} open drift alarm(s); retraining paused for "
               f"{', '.join(sorted({a['product'] for a in open_}))}.")
    st.dataframe([{"product": a["product"], "camera": a["camera"], "checks": ", ".join(a["kinds"]),
                   "opened": charts.fmt_ts(a["opened_at"]), "drifted verdicts": a["drifted_verdicts"],
                   "re-baseline requested": a["rebaseline_since"] is not None} for a in open_], hide_index=True)


drift()


@st.fragment(run_every=ctx.refresh_s)
def consumers() -> None:
    st.subheader("Consumers")
    ch = data.consumer_health(ctx.db_url, f.start, f.end)
    if ch.empty:
        st.info("No consumer snapshots in this range.")
        return
    frames, seconds = int(ch["frames"].sum()), ch["seconds"].max()
    cols = st.columns(5)
    cols[0].metric("Throughput", f"{(ch['fps'].sum()):,.2f} fps", help="sum over consumers of frames / interval time")
    cols[1].metric("Mean batch", f"{(ch['mean_batch'] * ch['frames']).sum() / frames if frames else 0.0:.2f}")
    cols[2].metric("Latency p50 / p99", f"{ch['p50_latency_ms'].median():.0f} / {ch['p99_latency_ms'].max():.0f} ms",
                   help="newest snapshot: median of the consumers' p50, worst p99")
    cols[3].metric("Consumer lag", f"{int(ch['lag'].sum()):,}", help="messages behind, newest snapshot, all consumers")
    cols[4].metric("DLQ", f"{int(ch['dlq_total'].sum()):,}", help="messages dead-lettered (newest totals)")
    st.caption(f"{len(ch)} consumers · {frames:,} frames in {seconds:,.0f} s of snapshots")
    ch = ch.assign(last=[charts.fmt_ts(t) for t in ch["last_at"]])
    st.dataframe(ch[["consumer", "fps", "mean_batch", "p50_latency_ms", "p99_latency_ms", "lag", "dlq_total",
                     "engine", "engine_ok", "last"]], hide_index=True,
                 column_config={"fps": st.column_config.NumberColumn(format="%.2f"),
                                "mean_batch": st.column_config.NumberColumn(format="%.2f"),
                                "p50_latency_ms": st.column_config.NumberColumn("p50 ms", format="%.0f"),
                                "p99_latency_ms": st.column_config.NumberColumn("p99 ms", format="%.0f")})
    span = (f.end - f.start) if f.start is not None and f.end is not None else None
    bucket = 60.0 if span is not None and span <= 6 * 3600 else 600.0 if span is not None and span <= 48 * 3600 else 3600.0
    ser = data.consumer_series(ctx.db_url, bucket, f.start, f.end)
    if not ser.empty:
        ser["time"] = [charts.fmt_ts(t) for t in ser["start"]]
        ser["t"] = ser["start"] * 1000
        base = alt.Chart(ser).encode(x=alt.X("t:T", title="time (UTC)"))
        c1, c2 = st.columns(2)
        c1.altair_chart(base.mark_line().encode(y=alt.Y("fps:Q", title="frames / s"), tooltip=["time", "fps"])
                        .properties(height=200, title="throughput"), width="stretch")
        lat = ser.melt(id_vars=["t", "time"], value_vars=["p50_latency_ms", "p99_latency_ms"], var_name="q", value_name="ms")
        c2.altair_chart(alt.Chart(lat).mark_line().encode(x=alt.X("t:T", title="time (UTC)"), y="ms:Q", color="q:N",
                                                          tooltip=["time", "q", "ms"])
                        .properties(height=200, title="end-to-end latency"), width="stretch")


consumers()

st.subheader("Inference server")
if ctx.triton_health_url is None:
    st.write("Local engine (no Triton URL configured).")
else:
    ready, detail = data.triton_ready(ctx.triton_health_url)
    (st.success if ready else st.error)(f"Triton {'ready' if ready else 'NOT ready'} at {ctx.triton_health_url}: {detail}")

st.subheader("Cache")
handle = data.cache(ctx.cache_url)
if handle is None:
    st.warning(f"Cache at {redact_url(ctx.cache_url)} could not be opened; pages read the database only.")
else:
    try:
        alive = bool(handle.ping())
    except Exception:  # noqa: BLE001 - report, do not crash the page
        alive = False
    st.write(f"Cache {'reachable' if alive else 'NOT reachable'} ({ctx.cache_url.split('://')[0]}://).")
    if alive:
        cams = data.entities(ctx.db_url)["cameras"]
        latest = [(c["name"], handle.latest(c["name"])) for c in cams]
        rows = [{"camera": n, "product": r.get("product"), "verdict": r.get("verdict"), "score": r.get("score"),
                 "captured": charts.fmt_ts(r.get("captured_at"))} for n, r in latest if r]
        if rows:
            st.dataframe(rows, hide_index=True)
        else:
            st.caption("No live results in the cache yet.")

st.subheader("Model versions")
held = data.held_models(ctx.db_url)
if held:
    st.error(f"{len(held)} product(s) HELD: the active model fails verification, so their frames wait in Kafka "
             "(not scored zero-shot). Repair the files or promote another version; consumers recover on their "
             "next registry poll. Prometheus: lineinspect_models_held{product}.")
    st.dataframe(held, hide_index=True)
mv = data.model_versions(ctx.db_url, f.product_ids)
if mv.empty:
    st.info("No registered models (zero-shot scoring until a model is trained).")
else:
    mv = mv.assign(created=[charts.fmt_ts(t) for t in mv["created_at"]],
                   promoted=[charts.fmt_ts(t) if t == t and t is not None else "-" for t in mv["promoted_at"]])
    st.dataframe(mv[["product", "version", "status", "threshold", "backbone", "metrics", "parent_version", "created", "promoted"]],
                 hide_index=True, column_config={"threshold": st.column_config.NumberColumn(format="%.4f")})
