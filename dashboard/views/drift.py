"""Drift: cameras whose frames no longer look like their model's normal, with the evidence, and the
operator's "this is the new normal" that starts a re-baseline."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from dashboard import charts, context, data

ctx = context.current()
st.title("Drift")
st.caption("A drift alarm pauses retraining of its product and marks the camera's verdicts since the onset as "
           "drifted. Confirming the new normal retrains on the frames since the chosen time (usual gate); the "
           "promotion closes the alarm. Times in UTC.")

alarms = data.drift_alarms(ctx.db_url)
open_ = [a for a in alarms if a["status"] == "open"]
cols = st.columns(3)
cols[0].metric("Open drift alarms", f"{len(open_)}")
cols[1].metric("Products paused", f"{len({a['product'] for a in open_})}")
cols[2].metric("Drifted verdicts", f"{sum(a['drifted_verdicts'] for a in open_):,}",
               help="results on drifted cameras since the alarm's onset")

if not open_:
    st.success("No open drift alarm: every camera looks like its model's normal.")
for a in open_:
    with st.container(border=True):
        st.subheader(f"{a['product']} · camera {a['camera']}")
        st.write(f"Alarm #{a['id']} opened {charts.fmt_ts(a['opened_at'])}, onset at frame {a['onset_frame_id']} "
                 f"({charts.fmt_ts(a['onset_at'])}), model {a['model_version']}; checks: **{', '.join(a['kinds'])}**. "
                 f"{a['drifted_verdicts']:,} verdicts marked drifted, {a['kept_frames']:,} frames kept for a re-baseline.")
        checks = (a.get("evidence") or {}).get("checks") or {}
        if checks:
            st.dataframe(pd.DataFrame([{"check": k, "value": v.get("value"), "limit": v.get("limit"),
                                        "unit": v.get("unit")} for k, v in checks.items()]), hide_index=True)
        if a["rebaseline_since"] is not None:
            st.info(f"New normal confirmed by {a['rebaseline_by']} since {charts.fmt_ts(a['rebaseline_since'])}: "
                    "the scheduler re-baselines on its next tick.")
            continue
        onset = dt.datetime.fromtimestamp(float(a["onset_at"]), tz=dt.UTC)
        c1, c2 = st.columns(2)
        day = c1.date_input("New normal since (date, UTC)", value=onset.date(), key=f"rb_day_{a['id']}")
        tod = c2.time_input("time (UTC)", value=onset.time().replace(microsecond=0), key=f"rb_time_{a['id']}",
                            step=60)
        if st.button("Confirm new normal", key=f"rb_{a['id']}", type="primary"):
            since = dt.datetime.combine(day, tod, tzinfo=dt.UTC).timestamp()
            n = data.request_rebaseline(ctx.db_url, a["product"], since, by="dashboard")
            st.success(f"Re-baseline of {a['product']} requested ({n} alarm(s)); frames since "
                       f"{charts.fmt_ts(since)} become the candidate training set.")

st.subheader("History")
if alarms:
    hist = pd.DataFrame([{"id": a["id"], "product": a["product"], "camera": a["camera"], "status": a["status"],
                          "checks": ", ".join(a["kinds"]), "opened": charts.fmt_ts(a["opened_at"]),
                          "resolved": charts.fmt_ts(a["resolved_at"]) if a["resolved_at"] else "",
                          "resolution": a["resolution"] or "", "drifted verdicts": a["drifted_verdicts"]}
                         for a in alarms])
    st.dataframe(hist, hide_index=True)
else:
    st.caption("No drift alarm has been raised.")
