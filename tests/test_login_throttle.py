"""Failed logins throttled per user name and per address (node/http/throttle.py)."""

from __future__ import annotations

from node.http.throttle import MAX_TRACKED, LoginThrottle
from node.replica.vocabulary import (
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_FAILURES_PER_USER,
    LOGIN_WINDOW_S,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_user_is_refused_after_its_failures_until_the_oldest_ages_out() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for i in range(LOGIN_FAILURES_PER_USER):
        assert throttle.retry_after("alice", f"10.0.0.{i}") is None
        throttle.failed("alice", f"10.0.0.{i}")
        clock.now += 1
    wait = throttle.retry_after("alice", "10.0.0.99")
    assert wait is not None and 0 < wait <= LOGIN_WINDOW_S
    assert throttle.retry_after("bob", "10.0.0.99") is None  # another name is not
    clock.now += wait
    assert throttle.retry_after("alice", "10.0.0.99") is None


def test_an_address_guessing_many_names_is_refused() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for i in range(LOGIN_FAILURES_PER_ADDRESS):
        throttle.failed(f"user{i}", "10.0.0.1")
    assert throttle.retry_after("someone-new", "10.0.0.1") is not None
    assert throttle.retry_after("someone-new", "10.0.0.2") is None


def test_random_names_cannot_grow_what_is_followed_without_end() -> None:
    throttle = LoginThrottle(Clock())
    for i in range(MAX_TRACKED * 2):
        throttle.failed(f"n{i}", "10.0.0.1")
    assert len(throttle._failures) <= MAX_TRACKED
    assert throttle.retry_after("n0", "10.0.0.2") is None  # forgotten first
