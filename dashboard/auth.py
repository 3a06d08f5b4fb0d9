"""Optional password gate: when ``settings.dashboard_password`` is set, every page asks for it once
per browser session. The comparison is constant-time and the password is never logged or echoed."""

from __future__ import annotations

import hmac

import streamlit as st
from pydantic import SecretStr

_STATE_KEY = "lineinspect_authenticated"


def password_ok(given: str, expected: SecretStr | str | None) -> bool:
    """Constant-time comparison; no configured password means the gate is open."""
    if expected is None:
        return True
    secret = expected.get_secret_value() if isinstance(expected, SecretStr) else expected
    if not secret:
        return True
    return hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8"))


def require_login(expected: SecretStr | None) -> bool:
    """Render the login form and stop the script until the session has entered the password."""
    if expected is None or not expected.get_secret_value() or st.session_state.get(_STATE_KEY):
        return True
    st.title("lineinspect")
    with st.form("login"):
        given = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        if password_ok(given, expected):
            st.session_state[_STATE_KEY] = True
            st.session_state.pop("login_password", None)
            st.rerun()
        st.error("Wrong password.")
    st.stop()
    return False  # pragma: no cover - st.stop() raises
