"""Defect locations: where on the product anomalies fall, as the mean of recent binary defect
masks on a fixed grid (a bounded, cached sample, so the page costs the same on any history)."""

from __future__ import annotations

import streamlit as st

from dashboard import context, data, imaging

ctx = context.current()
st.title("Defect locations")
c1, c2 = st.columns(2)
sample = c1.selectbox("Masks per product (newest)", [100, 500, 2000], index=1, key="loc_sample")
grid_n = c2.selectbox("Grid", [32, 64, 128], index=1, key="loc_grid")
st.caption("Each cell: fraction of the sampled defects that cover that part of the frame (false alarms excluded).")

names = context.product_names(ctx.db_url)
pids = list(ctx.filters.product_ids) or sorted(names, key=lambda p: names[p])
cols = st.columns(min(3, max(1, len(pids))))
for i, pid in enumerate(pids):
    with cols[i % len(cols)]:
        st.subheader(names[pid])
        heat, used = data.location_map(ctx.db_url, pid, ctx.filters, int(sample), (int(grid_n), int(grid_n)))
        if used == 0:
            st.info("No defect masks in this range.")
            continue
        st.image(imaging.colorize(heat, size=(384, 384)), width="stretch")
        st.caption(f"{used} masks · peak coverage {float(heat.max()) * 100:.1f} % · mean {float(heat.mean()) * 100:.2f} %")
