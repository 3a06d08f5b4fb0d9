"""Dashboard pages: Streamlit scripts run by ``dashboard/app.py`` through ``st.navigation`` (not imported)."""
