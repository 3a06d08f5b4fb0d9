"""Defect families: which defects, how often, where. Unsupervised groups of similar flagged regions
(inference/families.py); an operator's name for a family sticks to every region that joins it later."""

from __future__ import annotations

import altair as alt
import cv2
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import context, data

ctx = context.current()
st.title("Defect families")
st.caption(f"{ctx.range_label} · families are found without labels; name one to keep the name for its new members")
f = ctx.filters

pareto = data.family_pareto(ctx.db_url, f.start, f.end)
if pareto.empty:
    st.info("No flagged regions grouped into families in this range yet.")
    st.stop()
products = sorted(pareto["product"].unique())
product = st.selectbox("Product", products, key="fam_product")
p = pareto[pareto["product"] == product].copy()
p["label"] = [f"#{int(k)} {n}" if isinstance(n, str) and n else f"#{int(k)}" for k, n in zip(p["family"], p["name"])]
p["cumulative"] = p["regions"].cumsum() / p["regions"].sum()

st.subheader("Pareto of families")
bars = alt.Chart(p).mark_bar(color="#457b9d").encode(
    x=alt.X("label:N", sort=list(p["label"]), title="family"), y=alt.Y("regions:Q", title="regions"),
    tooltip=["label:N", "regions:Q", "frames:Q", alt.Tooltip("mean_area_px:Q", format=".0f")])
line = alt.Chart(p).mark_line(color="#e63946", point=True).encode(
    x=alt.X("label:N", sort=list(p["label"])),
    y=alt.Y("cumulative:Q", axis=alt.Axis(format="%", title="cumulative share")))
st.altair_chart(alt.layer(bars, line).resolve_scale(y="independent").properties(height=260), width="stretch")
st.dataframe(p[["label", "regions", "frames", "mean_area_px", "cumulative"]], hide_index=True,
             column_config={"cumulative": st.column_config.NumberColumn(format="percent"),
                            "mean_area_px": st.column_config.NumberColumn("mean area (px)", format="%.0f")})

family = st.selectbox("Family", [int(k) for k in p["family"]], key="fam_family",
                      format_func=lambda k: p.loc[p["family"] == k, "label"].iloc[0])
current = p.loc[p["family"] == family, "name"].iloc[0]
with st.form(key="fam_name_form"):
    new = st.text_input("Name of this family", value=current if isinstance(current, str) else "", key="fam_name")
    if st.form_submit_button("Save name"):
        data.name_family(ctx.db_url, product, family, new or None)
        st.session_state["fam_flash"] = f"Family #{family} of {product} is now called {new!r}; new members inherit the name."
        st.rerun()  # the Pareto and the family list show the new name
if "fam_flash" in st.session_state:
    st.success(st.session_state.pop("fam_flash"))

members = data.family_members(ctx.db_url, product, family)
c1, c2 = st.columns(2)
with c1:
    st.subheader("Where (location heatmap)")
    heat, _, _ = np.histogram2d([m["cy"] for m in members], [m["cx"] for m in members], bins=8, range=[[0, 1], [0, 1]])
    hm = pd.DataFrame([{"row": r, "col": c, "regions": int(heat[r, c])} for r in range(8) for c in range(8)])
    st.altair_chart(alt.Chart(hm).mark_rect().encode(
        x=alt.X("col:O", title="x (eighths of the frame)"), y=alt.Y("row:O", title="y (eighths of the frame)"),
        color=alt.Color("regions:Q", scale=alt.Scale(scheme="reds")), tooltip=["row:O", "col:O", "regions:Q"]
    ).properties(height=260), width="stretch")
with c2:
    st.subheader("Example crops")
    crops = []
    for m in members:
        if not m.get("frame"):
            continue
        img = cv2.imdecode(np.frombuffer(m["frame"], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            continue
        pad = max(8, int(0.25 * max(m["w"], m["h"])))
        y0, x0 = max(0, m["y"] - pad), max(0, m["x"] - pad)
        crop = img[y0:m["y"] + m["h"] + pad, x0:m["x"] + m["w"] + pad]
        crops.append(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
    if crops:
        st.image(crops[:6], width=120, caption=[f"region {i + 1}" for i in range(len(crops[:6]))])
    else:
        st.caption("No kept frames for this family's newest regions (keep_flagged_frames off?).")
