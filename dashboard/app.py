"""lineinspect defect dashboard: ``streamlit run dashboard/app.py`` (or ``lineinspect dashboard``).

The entrypoint of a multipage app: optional login, the shared sidebar filters, then the page
the user picked. Settings come from ``LINEINSPECT_*`` (the CLI passes its flags through env).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

if __package__ in (None, ""):  # run as a script by streamlit: make the repo's packages importable
    _root = str(Path(__file__).resolve().parents[1])
    if _root not in sys.path:
        sys.path.insert(0, _root)

from dashboard import auth, context, data
from lineinspect.settings import load_settings

PAGES = (
    ("views/overview.py", "Overview", ":material/monitoring:"),
    ("views/anomalies.py", "Latest anomalies", ":material/warning:"),
    ("views/locations.py", "Defect locations", ":material/grid_on:"),
    ("views/scores.py", "Score distributions", ":material/bar_chart:"),
    ("views/specimens.py", "Specimens", ":material/category:"),
    ("views/families.py", "Defect families", ":material/workspaces:"),
    ("views/drift.py", "Drift", ":material/trending_up:"),
    ("views/health.py", "System health", ":material/dns:"),
)


def main() -> None:
    st.set_page_config(page_title="lineinspect", page_icon=":material/visibility:", layout="wide")
    settings = load_settings()
    auth.require_login(settings.dashboard_password)
    problem = data.database_problem(settings.resolved_db_url)
    if problem is not None:
        st.error(f"Cannot read the inspection database: {problem}")
        st.stop()
    here = Path(__file__).resolve().parent
    nav = st.navigation([
        st.Page(str(here / path), title=title, icon=icon, default=(i == 0)) for i, (path, title, icon) in enumerate(PAGES)
    ])
    context.publish(context.sidebar(settings))
    nav.run()


main()
