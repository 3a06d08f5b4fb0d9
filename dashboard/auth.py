"""Optional password gate: when ``settings.dashboard_password`` is set, every page asks for it once
per browser session. The comparison is constant-time and the password is never logged or echoed.

Guessing is throttled per client (its IP address as Streamlit sees it, else the browser session):
after :data:`FREE_ATTEMPTS` failures each further failure locks that client out for an exponentially
growing delay (2 s, 4 s, 8 s ... capped at :data:`MAX_LOCK_S`); while locked, attempts are refused
without checking the password. One :class:`LoginThrottle` is shared by every session of the process.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
from pydantic import SecretStr

_STATE_KEY = "lineinspect_authenticated"
FREE_ATTEMPTS = 5
BASE_LOCK_S = 2.0
MAX_LOCK_S = 15 * 60.0
_MAX_CLIENTS = 10_000  # bounded memory under a spray of client ids

log = logging.getLogger(__name__)


@dataclass
class _Client:
    failures: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed-login bookkeeping per client; thread-safe (Streamlit runs sessions on threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, free: int | None = None,
                 base_s: float | None = None, max_s: float = MAX_LOCK_S) -> None:
        self.clock, self.max_s = clock, max_s
        self.free = FREE_ATTEMPTS if free is None else free
        self.base_s = BASE_LOCK_S if base_s is None else base_s
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may try again (0 when it may try now)."""
        with self._lock:
            c = self._clients.get(client)
            return max(0.0, c.locked_until - self.clock()) if c else 0.0

    def failed(self, client: str) -> float:
        """Record a failure; returns the lock-out it earned (0 while attempts are free)."""
        with self._lock:
            if client not in self._clients and len(self._clients) >= _MAX_CLIENTS:
                self._clients.pop(next(iter(self._clients)))
            c = self._clients.setdefault(client, _Client())
            c.failures += 1
            over = c.failures - self.free
            lock = 0.0 if over <= 0 else min(self.max_s, self.base_s * 2 ** (over - 1))
            c.locked_until = self.clock() + lock
        if lock:
            log.warning("dashboard login throttled", extra={"kv": {"failures": c.failures, "lock_s": lock}})
        return lock

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


@st.cache_resource(show_spinner=False)
def throttle() -> LoginThrottle:
    """The process-wide throttle (every browser session shares it)."""
    return LoginThrottle()


def client_id() -> str:
    """The client's IP address as Streamlit sees it, else this browser session's id."""
    ip = getattr(st.context, "ip_address", None)
    if isinstance(ip, str) and ip:
        return f"ip:{ip}"
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return f"session:{ctx.session_id if ctx else 'unknown'}"


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
        gate, who = throttle(), client_id()
        wait = gate.wait_s(who)
        if wait > 0:  # locked out: the password is not even checked
            st.error(f"Too many failed attempts; try again in {wait:.0f} s.")
            st.stop()
        if password_ok(given, expected):
            gate.succeeded(who)
            st.session_state[_STATE_KEY] = True
            st.session_state.pop("login_password", None)
            st.rerun()
        lock = gate.failed(who)
        st.error("Wrong password." + (f" Too many failed attempts; try again in {lock:.0f} s." if lock else ""))
    st.stop()
    return False  # pragma: no cover - st.stop() raises
