"""Overview: inspected frames, defect rate and throughput, trends and a p-chart of the defect rate."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, context, data

MAX_BUCKETS = 3000
ctx = context.current()
st.title("Overview")
drift_open = [a for a in data.drift_alarms(ctx.db_url, "open")]
if drift_open:  # the banner: a drifted camera floods the counts below with false alarms
    st.error(f"Drift alarm: {len(drift_open)} camera(s) no longer look like their model's normal ("
             + "; ".join(f"{a['product']}/{a['camera']}: {', '.join(a['kinds'])}" for a in drift_open)
             + "). Their verdicts are marked drifted and retraining is paused. See the Drift page.",
             icon=":material/warning:")
st.caption(f"{ctx.range_label} · times in UTC · defects exclude frames marked as false alarms")
bucket_name = st.radio("Trend bucket", list(charts.BUCKETS), index=1, horizontal=True, key="overview_bucket")


@st.fragment(run_every=ctx.refresh_s)
def live() -> None:
    f = ctx.filters
    s = data.summary(ctx.db_url, f)
    tput = charts.throughput_per_min(s.inspected, f.start, f.end, s.first_at, s.last_at)
    cols = st.columns(7)
    cols[0].metric("Inspected", f"{s.inspected:,}")
    cols[1].metric("Defects", f"{s.defects:,}")
    cols[2].metric("Defect rate", f"{s.defect_rate * 100:.2f} %")
    cols[3].metric("False alarms", f"{s.false_alarms:,}")
    cols[4].metric("Active rate", f"{tput:,.1f} /min",
                   help="frames per minute between the first and the last frame in the range (not a 24 h average)")
    cols[5].metric("Mean latency", charts.fmt_ms(s.mean_latency_ms), help="camera capture -> result stored")
    cols[6].metric("Drifted verdicts", f"{s.drifted:,}",
                   help="results stored while their camera had an open drift alarm (see the Drift page); "
                        "they count above as usual but never become training data")
    if s.inspected == 0 or s.first_at is None or s.last_at is None:
        st.info(f"No inspection results in this range. Newest result: {charts.fmt_ts(data.time_bounds(ctx.db_url)[1])}.")
        return

    lo = f.start if f.start is not None else s.first_at
    hi = f.end if f.end is not None else s.last_at + 1e-6
    name = bucket_name
    if (hi - lo) / charts.BUCKETS[name][0] > MAX_BUCKETS:  # a week of minutes is unreadable: go coarser
        name = next((n for n, (w, _) in charts.BUCKETS.items() if (hi - lo) / w <= MAX_BUCKETS), list(charts.BUCKETS)[-1])
        st.caption(f"{bucket_name} buckets are too many for this range; showing per {name}.")
    bucket_s, origin = charts.BUCKETS[name]
    rows = data.trend(ctx.db_url, f, bucket_s, origin)
    rows = charts.fill_buckets(rows, lo, hi, bucket_s, origin)
    df = pd.DataFrame(rows)
    df["time"] = pd.to_datetime(df["start"], unit="s", utc=True)
    if name.startswith("shift"):
        df["label"] = [charts.shift_label(t, origin) for t in df["start"]]
    else:
        df["label"] = df["time"].dt.strftime("%Y-%m-%d %H:%M")

    st.subheader(f"Inspected and defects per {name}")
    counts = df.melt(id_vars=["time", "label"], value_vars=["inspected", "defects"], var_name="series", value_name="frames")
    st.altair_chart(
        alt.Chart(counts).mark_line(point=len(df) <= 60).encode(
            x=alt.X("time:T", title="time (UTC)"), y=alt.Y("frames:Q"), color="series:N",
            tooltip=["label:N", "series:N", "frames:Q"],
        ).properties(height=240),
        width="stretch",
    )

    st.subheader("Control chart of the defect rate (p-chart)")
    nz = df[df["inspected"] > 0].reset_index(drop=True)
    pc = charts.p_chart(nz["inspected"].to_numpy(), nz["defects"].to_numpy())
    nz = nz.assign(rate=pc.rate, ucl=pc.ucl, lcl=pc.lcl, center=pc.center,
                   state=["out of control" if o else "in control" for o in pc.out])
    base = alt.Chart(nz).encode(x=alt.X("time:T", title="time (UTC)"))
    chart = (
        base.mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(y="ucl:Q")
        + base.mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(y="lcl:Q")
        + base.mark_line(color="#2a9d8f").encode(y="center:Q")
        + base.mark_line(color="#457b9d").encode(y=alt.Y("rate:Q", title="defect rate", axis=alt.Axis(format="%")))
        + base.mark_point(filled=True, size=60).encode(
            y="rate:Q",
            color=alt.Color("state:N", scale=alt.Scale(domain=["in control", "out of control"], range=["#457b9d", "#e63946"])),
            tooltip=["label:N", "inspected:Q", "defects:Q", alt.Tooltip("rate:Q", format=".2%"),
                     alt.Tooltip("ucl:Q", format=".2%"), alt.Tooltip("lcl:Q", format=".2%")],
        )
    )
    st.altair_chart(chart.properties(height=260), width="stretch")
    n_out = int(pc.out.sum())
    st.caption(f"Centre line p̄ = {pc.center * 100:.2f} %, limits p̄ ± 3·√(p̄(1−p̄)/n) per bucket. "
               f"{n_out} of {len(nz)} buckets outside the limits.")
    if n_out:
        out = nz[pc.out][["label", "inspected", "defects", "rate", "lcl", "ucl"]]
        st.dataframe(out, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="percent") for c in ("rate", "lcl", "ucl")})

    st.subheader("Breakdown")
    for tab, by in zip(st.tabs(["Per product", "Per line", "Per camera"]), ("product", "line", "camera")):
        with tab:
            bd = data.breakdown(ctx.db_url, f, by)
            bd["throughput_per_min"] = [
                charts.throughput_per_min(n, f.start, f.end, a, b) for n, a, b in zip(bd["inspected"], bd["first_at"], bd["last_at"])
            ]
            st.dataframe(
                bd[["name", "inspected", "defects", "defect_rate", "false_alarms", "throughput_per_min", "mean_score"]],
                hide_index=True,
                column_config={"name": by, "defect_rate": st.column_config.NumberColumn("defect rate", format="percent"),
                               "throughput_per_min": st.column_config.NumberColumn("frames/min", format="%.1f"),
                               "mean_score": st.column_config.NumberColumn("mean score", format="%.3f")},
            )


live()
