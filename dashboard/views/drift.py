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
           "drifted (never training data). Confirming the new normal retrains on the frames since the chosen time "
           "(usual gate); the promotion closes the alarm. A false alarm can be dismissed instead. Times in UTC.")

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
        with st.expander("Not drift? Dismiss this alarm"):
            st.caption("Closes the alarm without retraining: its verdicts are no longer marked drifted, the "
                       "camera's reference is rebuilt from the next frames and retraining resumes (if no other "
                       "alarm of the product is open). If the camera really changed, it will alarm again.")
            who = st.text_input("Your name", key=f"dis_by_{a['id']}", max_chars=128)
            why = st.text_input("Reason", key=f"dis_why_{a['id']}", max_chars=500)
            if st.button("Dismiss alarm", key=f"dis_{a['id']}", disabled=not who.strip()):
                n = data.dismiss_drift_alarm(ctx.db_url, int(a["id"]), who, why)
                st.success(f"Alarm #{a['id']} dismissed by {who.strip()}; {n:,} verdicts no longer marked drifted.")

st.subheader("History")
if alarms:
    hist = pd.DataFrame([{"id": a["id"], "product": a["product"], "camera": a["camera"], "status": a["status"],
                          "checks": ", ".join(a["kinds"]), "opened": charts.fmt_ts(a["opened_at"]),
                          "resolved": charts.fmt_ts(a["resolved_at"]) if a["resolved_at"] else "",
                          "by": a.get("closed_by") or "", "resolution": a["resolution"] or "",
                          "drifted verdicts": a["drifted_verdicts"]}
                         for a in alarms])
    st.dataframe(hist, hide_index=True)
else:
    st.caption("No drift alarm has been raised.")
