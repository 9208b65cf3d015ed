"""The dashboard's caps as flags, and the failed-login throttle's arithmetic on a clock of
its own."""

from __future__ import annotations

import pytest

from dashboard import throttle
from dashboard.throttle import FREE_TRIES, FREE_TRIES_PER_ADDRESS, Throttle, Throttled
from proxy.config import parse_settings


def test_dashboard_caps_are_flags() -> None:
    default = parse_settings([])
    assert (default.dashboard_connections, default.dashboard_connections_per_role) == (10, 2)
    chosen = parse_settings(
        [
            "--dashboard-connections",
            "6",
            "--dashboard-connections-per-role",
            "3",
            "--dashboard-connection-idle",
            "2.5",
            "--dashboard-connection-wait",
            "0",
            "--dashboard-login-delay",
            "0.5",
            "--dashboard-login-max-delay",
            "8",
        ]
    )
    assert chosen.dashboard_connections == 6 and chosen.dashboard_connections_per_role == 3
    assert chosen.dashboard_connection_idle == 2.5 and chosen.dashboard_connection_wait == 0
    assert chosen.dashboard_login_delay == 0.5 and chosen.dashboard_login_max_delay == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["--dashboard-connections-per-role", "0"],
        ["--dashboard-connections", "1", "--dashboard-connections-per-role", "2"],
        ["--dashboard-login-delay", "-1"],
    ],
)
def test_bad_dashboard_caps_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    found = Clock()
    monkeypatch.setattr(throttle.time, "monotonic", found)
    return found


def fail(gate: Throttle, role: str, address: str) -> None:
    gate.begin(role, address)
    gate.end(role, address, False)


def test_the_wait_doubles_up_to_the_most(clock: Clock) -> None:
    gate = Throttle(delay=1.0, max_delay=3.0)
    for _ in range(FREE_TRIES):
        fail(gate, "r", "a")
    waits = []
    for _ in range(4):
        with pytest.raises(Throttled) as caught:
            gate.begin("r", "a")
        waits.append(caught.value.retry_after)
        clock.now += caught.value.retry_after
        fail(gate, "r", "a")
    assert waits == [1.0, 2.0, 3.0, 3.0]
    gate.begin("x", "a")  # another role from the same address: its own count
    gate.end("x", "a", True)


def test_a_success_clears_the_roles_count_for_its_address(clock: Clock) -> None:
    gate = Throttle(delay=1.0, max_delay=60.0)
    for _ in range(FREE_TRIES):
        fail(gate, "r", "a")
    clock.now += 1.0
    for _ in range(FREE_TRIES):
        fail(gate, "r", "b")
    gate.begin("r", "a")
    gate.end("r", "a", True)
    gate.begin("r", "a")  # at once again: the count is cleared
    gate.end("r", "a", None)  # neither refused nor accepted: no change
    with pytest.raises(Throttled):
        gate.begin("r", "b")  # the role from another address still waits
    for _ in range(FREE_TRIES):
        fail(gate, "r", "a")
    with pytest.raises(Throttled):
        gate.begin("r", "a")


def test_one_login_of_a_role_and_address_at_a_time(clock: Clock) -> None:
    gate = Throttle(delay=1.0, max_delay=60.0)
    gate.begin("r", "a")
    with pytest.raises(Throttled) as caught:
        gate.begin("r", "a")
    assert caught.value.seconds == 1
    gate.begin("r", "b")
    gate.end("r", "a", True)
    gate.end("r", "b", True)


def test_many_roles_from_one_address(clock: Clock) -> None:
    gate = Throttle(delay=1.0, max_delay=60.0)
    for n in range(FREE_TRIES_PER_ADDRESS):
        fail(gate, f"r{n}", "a")
    with pytest.raises(Throttled):
        gate.begin("new", "a")
    gate.begin("new", "b")
    gate.end("new", "b", True)
    clock.now += throttle.FORGET_SECONDS + 1
    gate.begin("new", "a")  # forgotten after a quiet while
    gate.end("new", "a", True)
