"""Latest anomalies: flagged frames with their heatmap overlaid, and a false-alarm button that
turns a frame back into normal training data."""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import charts, context, data, imaging
from lineinspect.logs import kv

log = logging.getLogger(__name__)
ctx = context.current()
st.title("Latest anomalies")
c1, c2, c3 = st.columns([1, 1, 2])
limit = c1.selectbox("Show", [12, 24, 48], index=0, key="anomaly_limit")
per_row = c2.selectbox("Per row", [3, 4, 6], index=1, key="anomaly_cols")
with_fa = c3.checkbox("Include frames already marked as false alarms", key="anomaly_with_fa")


def mark_false_alarm(result_id: int) -> None:
    """Flag through the result store (which also keeps the frame as a normal training sample)."""
    from storage.store import ResultStore

    added = ResultStore(data.db_engine(ctx.db_url), ctx.db_url).mark_false_alarm(result_id)
    log.info("marked false alarm", extra=kv(result_id=result_id, training_sample_added=added))
    data.clear()
    st.session_state["anomaly_notice"] = (
        f"Result {result_id} marked as a false alarm"
        + (" and kept as a normal training sample." if added else
           " (no new training sample: no stored frame, already kept, or a drifted camera's frame).")
    )


def card(row: dict) -> None:
    imgs = data.anomaly_images(ctx.db_url, row["id"])
    frame = imaging.bounded_preview(imaging.decode_image(imgs["frame"])) if imgs["frame"] else None
    heat = imaging.decode_image(imgs["heat_png"], grayscale=True) if imgs["heat_png"] else None
    mask = imaging.decode_image(imgs["mask_png"], grayscale=True) if imgs["mask_png"] else None
    if frame is not None and heat is not None:
        st.image(imaging.overlay_heatmap(frame, heat, mask=mask), width="stretch")
    elif frame is not None:
        st.image(frame, width="stretch")
    else:
        st.caption("no stored frame")
    tag = (" · false alarm" if row["false_alarm"] else "") + (" · drifted" if row.get("drifted") else "")
    st.markdown(f"**{row['product']}** · {row['camera']} · frame {row['frame_id']}{tag}")
    st.caption(f"score **{row['score']:.3f}** / threshold {row['threshold']:.3f} · model {row['model_version']} "
               f"({row['engine']}) · {charts.fmt_ts(row['captured_at'])}")
    with st.expander("Full frame"):
        if frame is not None:
            st.image(frame, caption=f"frame {row['width']}x{row['height']} (preview {frame.shape[1]}x{frame.shape[0]})",
                     width="stretch")
        if heat is not None:
            st.image(imaging.colorize(heat.astype("float32") / 255.0), caption="anomaly map (0..2x threshold)", width="stretch")
        if mask is not None:
            st.image(mask, caption=f"defect mask · {row['defect_area_px']} px", width="stretch")
    if not row["false_alarm"]:
        st.button("Mark as false alarm", key=f"fa_{row['id']}", on_click=mark_false_alarm, args=(row["id"],))


@st.fragment(run_every=ctx.refresh_s)
def gallery() -> None:
    if notice := st.session_state.pop("anomaly_notice", None):
        st.success(notice)
    rows = data.anomalies(ctx.db_url, ctx.filters, int(limit), bool(with_fa))
    if not rows:
        st.info("No flagged frames in this range.")
        return
    st.caption(f"Newest {len(rows)} flagged frames ({ctx.range_label}).")
    for start in range(0, len(rows), per_row):
        for col, row in zip(st.columns(per_row), rows[start:start + per_row]):
            with col.container(border=True):
                card(row)


gallery()
