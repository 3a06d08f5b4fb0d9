"""Defect families: which defects, how often, where. A Pareto chart of each product's families over
the selected range, then per family its name (editable: the name sticks to every later member),
example crops from the stored evidence, its location heatmap and a control chart of its rate."""

from __future__ import annotations

import logging

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, context, data, family_charts, imaging
from lineinspect.logs import kv
from storage.queries import Filters

log = logging.getLogger(__name__)
ctx = context.current()
st.title("Defect families")
st.caption("Flagged regions (connected components of defect masks) grouped without labels by what they look like; "
           "false alarms excluded. Name a family and every later member carries the name.")
c1, c2, c3 = st.columns(3)
top_n = c1.selectbox("Families shown per product", [3, 5, 8], index=1, key="fam_top")
n_examples = c2.selectbox("Examples per family", [2, 4, 6], index=1, key="fam_examples")
bucket_name = c3.selectbox("Control chart per", list(charts.BUCKETS), index=1, key="fam_bucket")


def save_name(product: str, family_id: int, key: str) -> None:
    """Through storage (the only SQL owner); an invalid name is refused with the reason."""
    from storage.families import FamilyStore

    try:
        kept = FamilyStore(data.engine(ctx.db_url), ctx.db_url).set_name(product, family_id, st.session_state.get(key, ""))
    except (ValueError, LookupError) as exc:
        st.session_state["fam_notice"] = ("error", f"Name not saved: {exc}")
        return
    log.info("family named", extra=kv(product=product, family_id=kept))
    data.clear()
    st.session_state["fam_notice"] = ("ok", f"Family #{kept} of {product} renamed.")


notice = st.session_state.pop("fam_notice", None)
if notice:
    (st.success if notice[0] == "ok" else st.error)(notice[1])

rows = data.family_pareto(ctx.db_url, ctx.filters)
if not rows:
    st.info("No flagged regions in this range yet. Regions are embedded and grouped as defect frames are stored.")
    st.stop()

products = sorted({(r["product_id"], r["product"]) for r in rows}, key=lambda p: p[1])
bucket_s, origin = charts.BUCKETS[bucket_name]
trend = data.family_trend(ctx.db_url, ctx.filters, bucket_s, origin)

for pid, pname in products:
    df = family_charts.pareto_frame([r for r in rows if r["product_id"] == pid])
    st.header(pname)
    st.caption(f"{int(df['regions'].sum())} regions in {int(df['frames'].sum())} frame-family pairs · "
               f"{int(df['family_id'].notna().sum())} families")
    order = df["label"].tolist()
    base = alt.Chart(df).encode(x=alt.X("label:N", sort=order, title="family"))
    st.altair_chart(
        alt.layer(
            base.mark_bar(color="#457b9d").encode(y=alt.Y("regions:Q", title="regions"),
                                                   tooltip=["label:N", "regions:Q", "frames:Q",
                                                            alt.Tooltip("share:Q", format=".1%")]),
            base.mark_line(color="#e63946", point=True).encode(
                y=alt.Y("cumulative:Q", title="cumulative share", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
                tooltip=["label:N", alt.Tooltip("cumulative:Q", format=".1%")]),
        ).resolve_scale(y="independent").properties(height=260),
        width="stretch",
    )
    # the product's inspected counts per bucket: the denominator of each family's rate
    pf = Filters(start=ctx.filters.start, end=ctx.filters.end, product_ids=(pid,), line_ids=ctx.filters.line_ids,
                 camera_ids=ctx.filters.camera_ids)
    inspected = pd.DataFrame(data.trend(ctx.db_url, pf, bucket_s, origin), columns=["start", "inspected", "defects", "false_alarms"])
    for _, fam in df[df["family_id"].notna()].head(int(top_n)).iterrows():
        fid = int(fam["family_id"])
        with st.container(border=True):
            st.subheader(f"{fam['label']} · {int(fam['regions'])} regions ({fam['share']:.0%})")
            key = f"fam_name_{pid}_{fid}"
            n1, n2 = st.columns([3, 1])
            n1.text_input("Name", value=fam["name"] if isinstance(fam["name"], str) else "", key=key,
                          placeholder="e.g. crack, blowhole", max_chars=128)
            n2.button("Save name", key=f"save_{key}", on_click=save_name, args=(pname, fid, key))
            left, right = st.columns([3, 1])
            with left:
                ex = data.family_examples(ctx.db_url, pid, fid, ctx.filters, int(n_examples))
                cols = st.columns(max(1, len(ex)))
                for col, e in zip(cols, ex):
                    if e["frame"]:
                        img = imaging.decode_image(e["frame"])
                    elif e["heat_png"]:
                        img = imaging.colorize(imaging.decode_image(e["heat_png"], grayscale=True).astype("float32") / 255.0)
                    else:
                        col.caption("no stored evidence")
                        continue
                    col.image(family_charts.crop(img, (e["x0"], e["y0"], e["x1"], e["y1"])), width="stretch",
                              caption=f"result {e['result_id']}")
            with right:
                dens = family_charts.location_density(data.family_locations(ctx.db_url, pid, fid, ctx.filters))
                st.image(imaging.colorize(dens, size=(192, 192)), caption="where (centroid density)", width="stretch")
            ft = trend[(trend["product_id"] == pid) & (trend["family_id"] == fid)]
            merged = inspected.merge(ft.rename(columns={"bucket": "start"})[["start", "frames"]], on="start", how="left").fillna(0)
            merged = merged[merged["inspected"] > 0].reset_index(drop=True)
            if len(merged) >= 2:
                pc = charts.p_chart(merged["inspected"].to_numpy(), merged["frames"].to_numpy().astype(int))
                cc = merged.assign(rate=pc.rate, ucl=pc.ucl, center=pc.center,
                                   time=pd.to_datetime(merged["start"], unit="s", utc=True),
                                   state=["out of control" if o else "in control" for o in pc.out])
                b = alt.Chart(cc).encode(x=alt.X("time:T", title="time (UTC)"))
                st.altair_chart(
                    (b.mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(y="ucl:Q")
                     + b.mark_line(color="#2a9d8f").encode(y="center:Q")
                     + b.mark_line(color="#457b9d").encode(y=alt.Y("rate:Q", title="frames with this family",
                                                                    axis=alt.Axis(format="%")))
                     + b.mark_point(filled=True).encode(
                         y="rate:Q", color=alt.Color("state:N", scale=alt.Scale(domain=["in control", "out of control"],
                                                                                range=["#457b9d", "#e63946"])),
                         tooltip=[alt.Tooltip("time:T"), "inspected:Q", "frames:Q", alt.Tooltip("rate:Q", format=".2%")]))
                    .properties(height=180),
                    width="stretch",
                )
            else:
                st.caption("Control chart: needs two buckets with inspected frames in this range.")
