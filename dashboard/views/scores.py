"""Score distributions per product against the current threshold (histograms binned in SQL)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import context, data

ctx = context.current()
st.title("Score distributions")
bin_width = st.select_slider("Bin width", [0.01, 0.02, 0.05, 0.1, 0.2], value=0.05, key="score_bin")
hist = data.score_histogram(ctx.db_url, ctx.filters, float(bin_width))
names = context.product_names(ctx.db_url)
thr = data.thresholds(ctx.db_url)
if hist.empty:
    st.info("No inspection results in this range.")
    st.stop()

for pid, part in hist.groupby("product_id", sort=True):
    name = names.get(int(pid), str(pid))
    t = thr.get(int(pid))
    st.subheader(name)
    ok = part["count"] - part["defects"] - part["false_alarms"]
    long = pd.concat([
        part.assign(kind="ok", frames=ok), part.assign(kind="defect", frames=part["defects"]),
        part.assign(kind="false alarm", frames=part["false_alarms"]),
    ])
    long = long[long["frames"] > 0]
    bars = alt.Chart(long).mark_bar().encode(
        x=alt.X("bin_start:Q", bin="binned", title="anomaly score"), x2="bin_end:Q",
        y=alt.Y("sum(frames):Q", title="frames"),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["ok", "defect", "false alarm"], range=["#457b9d", "#e63946", "#f4a261"])),
        tooltip=["bin_start:Q", "bin_end:Q", "kind:N", "frames:Q"],
    )
    chart = bars
    if t is not None:
        rule = alt.Chart(pd.DataFrame({"threshold": [t["threshold"]]})).mark_rule(color="black", strokeDash=[6, 3]).encode(x="threshold:Q")
        chart = bars + rule
    st.altair_chart(chart.properties(height=220), width="stretch")
    total = int(part["count"].sum())
    above = int(part.loc[part["bin_start"] >= (t["threshold"] if t else float("inf")), "count"].sum())
    st.caption(
        f"{total:,} frames · threshold "
        + (f"{t['threshold']:.3f} ({t['model_version']}, {t['source']})" if t else "unknown")
        + f" · {above:,} frames in bins at or above it"
    )
