"""Password check (the AppTest of the login form is in test_pages.py)."""

from __future__ import annotations

from pydantic import SecretStr

from dashboard.auth import LoginThrottle, password_ok


def test_password_ok() -> None:
    assert password_ok("s3cret", SecretStr("s3cret"))
    assert not password_ok("s3cre", SecretStr("s3cret"))
    assert not password_ok("", SecretStr("s3cret"))
    assert password_ok("anything", None) and password_ok("anything", SecretStr(""))
    assert password_ok("ünï", "ünï")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_throttle_locks_out_a_client_exponentially_and_not_others() -> None:
    clock = FakeClock()
    gate = LoginThrottle(clock=clock, free=3, base_s=2.0, max_s=60.0)
    assert [gate.failed("ip:a") for _ in range(3)] == [0.0, 0.0, 0.0]  # free attempts
    assert gate.wait_s("ip:a") == 0.0
    assert gate.failed("ip:a") == 2.0 and gate.wait_s("ip:a") == 2.0
    assert gate.wait_s("ip:b") == 0.0  # other clients are not affected
    clock.now += 2.0
    assert gate.wait_s("ip:a") == 0.0
    locks = [gate.failed("ip:a") for _ in range(6)]
    assert locks == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0]  # doubling, capped
    gate.succeeded("ip:a")
    assert gate.wait_s("ip:a") == 0.0 and gate.failed("ip:a") == 0.0  # a success resets the count


def test_login_form_refuses_attempts_while_locked(seeded_db, make_app, monkeypatch) -> None:
    """Through the real page: after the free failures even the right password is refused until the lock ends."""
    from dashboard import auth

    auth.throttle.clear()
    monkeypatch.setattr(auth, "FREE_ATTEMPTS", 2)
    monkeypatch.setattr(auth, "BASE_LOCK_S", 600.0)  # the lock outlasts the test whatever the machine's speed
    url, _ = seeded_db
    at = make_app(url, password="open sesame")
    for _ in range(3):
        at.text_input(key="login_password").input("wrong")
        at.button[0].click().run()
    assert any("Too many failed attempts" in e.value for e in at.error)
    at.text_input(key="login_password").input("open sesame")
    at.button[0].click().run()
    assert not at.metric and any("Too many failed attempts" in e.value for e in at.error)
    auth.throttle.clear()
