"""dashboard: the Streamlit defect dashboard (reads storage only)."""
