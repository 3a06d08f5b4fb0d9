"""Specimens: fused per-part verdicts beside the frame verdicts of each view."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, context, data

ctx = context.current()
st.title("Specimens")
st.caption("A specimen is one physical part seen by several cameras / lights; its verdict fuses its views' scores. "
           "Time range applies to the decision time; line and camera filters do not apply.")

summ = data.specimen_summary(ctx.db_url, ctx.filters)
total, defects, incomplete = int(summ["specimens"].sum()), int(summ["defects"].sum()), int(summ["incomplete"].sum())
cols = st.columns(4)
cols[0].metric("Specimens", f"{total:,}")
cols[1].metric("Defective specimens", f"{defects:,}")
cols[2].metric("Specimen defect rate", f"{(defects / total * 100 if total else 0.0):.2f} %")
cols[3].metric("Incomplete", f"{incomplete:,}", help="decided before every expected view arrived")
if total == 0:
    st.info("No specimens in this range.")
    st.stop()

summ["defect_rate"] = summ["defects"] / summ["specimens"]
st.dataframe(summ[["product", "specimens", "defects", "defect_rate", "complete", "incomplete"]], hide_index=True,
             column_config={"defect_rate": st.column_config.NumberColumn("defect rate", format="percent")})

st.subheader("Recent specimens")
only_bad = st.checkbox("Only defective or incomplete", key="spec_only_bad")
recent = data.recent_specimens(ctx.db_url, ctx.filters, 200)
if only_bad:
    recent = recent[(recent["verdict"] == "defect") | (~recent["complete"])]
recent = recent.assign(decided=[charts.fmt_ts(t) for t in recent["decided_at"]],
                       views=[f"{r}/{e}" for r, e in zip(recent["received_views"], recent["expected_views"])])
st.dataframe(recent[["product", "specimen_id", "verdict", "score", "threshold", "fusion", "complete", "views", "decided"]],
             hide_index=True, height=280, column_config={"score": st.column_config.NumberColumn(format="%.3f"),
                                                         "threshold": st.column_config.NumberColumn(format="%.3f")})

if not recent.empty:
    st.subheader("Views of one specimen")
    labels = [f"{p} · {s}" for p, s in zip(recent["product"], recent["specimen_id"])]
    pick = st.selectbox("Specimen", range(len(labels)), format_func=lambda i: labels[i], key="spec_pick")
    row = recent.iloc[int(pick)]
    frames = data.specimen_frames(ctx.db_url, int(row["product_id"]), str(row["specimen_id"]))
    st.markdown(f"Specimen verdict **{row['verdict']}** (score {row['score']:.3f}, {row['fusion']} of "
                f"{row['received_views']}/{row['expected_views']} views, {'complete' if row['complete'] else 'incomplete'})")
    if frames.empty:
        st.caption("No frame results for this specimen (retention may have removed them).")
    else:
        frames["captured"] = [charts.fmt_ts(t) for t in frames["captured_at"]]
        st.dataframe(frames[["view", "camera", "frame_id", "verdict", "score", "threshold", "false_alarm", "drifted",
                             "captured"]],
                     hide_index=True, column_config={"score": st.column_config.NumberColumn(format="%.3f"),
                                                     "threshold": st.column_config.NumberColumn(format="%.3f")})
