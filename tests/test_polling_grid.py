"""server.polling_grid: the study's pull loop (short back-off instead of Flower's fixed 3 s) and its bounded retry
of a SuperLink that answers HTTP 500 (SQLite 'database is locked' under load), on a scripted grid with a fake
clock."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import httpx
import pytest
from flwr.serverapp import Grid

from server import polling_grid as pg
from server.polling_grid import PollingGrid, SuperLinkError


def http_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://127.0.0.1:9000/v1/runtime/pull-messages")
    return httpx.HTTPStatusError(
        f"{status}", request=request, response=httpx.Response(status, request=request)
    )


def reply_to(message_id: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id))


class ScriptedGrid(Grid):
    """Each pull takes the next item of ``script``: message ids whose replies arrive now, or an exception."""

    def __init__(self, script: list, clock: list[float]) -> None:
        self.script, self.clock = list(script), clock
        self.pull_times: list[float] = []
        self.pulled_ids: list[set[str]] = []

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        return [m for m in messages]  # the "messages" of these tests are their ids

    def pull_messages(self, message_ids):
        self.pull_times.append(self.clock[0])
        self.pulled_ids.append(set(message_ids))
        step = self.script.pop(0) if self.script else []
        if isinstance(step, Exception):
            raise step
        return [reply_to(i) for i in step]

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError


def polling(script: list) -> tuple[PollingGrid, ScriptedGrid, list[float]]:
    clock = [0.0]
    inner = ScriptedGrid(script, clock)
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock[0] += s

    return PollingGrid(inner, sleep=sleep, clock=lambda: clock[0]), inner, sleeps


def test_replies_are_pulled_within_a_fraction_of_a_second_not_flowers_3_s() -> None:
    grid, inner, sleeps = polling([[], [], ["a"], [], ["b"]])
    replies = grid.send_and_receive(["a", "b"], timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert sleeps[0] == pg.FIRST_INTERVAL_S
    assert sleeps[1] == pytest.approx(pg.FIRST_INTERVAL_S * pg.BACKOFF)
    assert sleeps[2] == pg.FIRST_INTERVAL_S  # a reply came in: back to the short interval
    assert max(sleeps) <= pg.MAX_INTERVAL_S < 3
    assert inner.pulled_ids[-1] == {"b"}  # only what is still missing is asked for


def test_the_interval_backs_off_to_its_maximum_while_nothing_comes() -> None:
    grid, _, sleeps = polling([[]] * 30 + [["a"]])
    grid.send_and_receive(["a"], timeout=600)
    assert sleeps == sorted(sleeps)
    assert sleeps[-1] == pg.MAX_INTERVAL_S
    assert len(sleeps) == 30


def test_timeout_returns_what_came_in_and_stops_on_time() -> None:
    grid, inner, _ = polling([["a"]])
    replies = grid.send_and_receive(["a", "b"], timeout=10)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert inner.pull_times[-1] == pytest.approx(10.0)


def test_http_500_is_retried_with_a_warning_and_the_round_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    grid, _, sleeps = polling([http_error(500), http_error(500), ["a"]])
    with caplog.at_level(logging.WARNING, logger="server.polling_grid"):
        replies = grid.send_and_receive(["a"], timeout=60)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 500 to pull-messages (try 1 of" in warnings[0] and "database is locked" in warnings[0]
    assert sleeps == [pg.RETRY_WAIT_S, pg.RETRY_WAIT_S]


def test_a_superlink_that_keeps_failing_ends_the_study_with_the_remedy() -> None:
    grid, inner, _ = polling([http_error(500)] * (pg.TRANSIENT_RETRIES + 1) + [["a"]])
    with pytest.raises(
        SuperLinkError, match=r"HTTP 500 to pull-messages 6 times.*NASOFL_SUPERLINK_STATE=memory"
    ):
        grid.send_and_receive(["a"], timeout=600)
    assert len(inner.pull_times) == pg.TRANSIENT_RETRIES + 1  # bounded


def test_other_http_errors_are_not_retried() -> None:
    grid, inner, _ = polling([http_error(404), ["a"]])
    with pytest.raises(httpx.HTTPStatusError):
        grid.send_and_receive(["a"], timeout=60)
    assert len(inner.pull_times) == 1


def test_a_message_the_superlink_refused_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    grid, inner, _ = polling([["a"]])
    with caplog.at_level(logging.WARNING, logger="server.polling_grid"):
        replies = grid.send_and_receive(["a", ""], timeout=600)
    assert len(replies) == 1 and len(inner.pull_times) == 1
    assert "did not accept 1 of 2 messages" in caplog.text


def test_the_study_polls_flowers_deployment_grid_itself() -> None:
    """server.app hands the Study for_study(grid): Flower's deployment grid (whose loop sleeps 3 s per pull) in a
    PollingGrid; the simulation grid (0.1 s already) and others as they are."""
    import inspect

    from flwr.superlink.grid import HttpGrid, InMemoryGrid

    from server import app
    from server.polling_grid import for_study

    assert "Study(for_study(grid)" in inspect.getsource(app.main)
    deployment = HttpGrid(token="not-used-offline")
    assert isinstance(for_study(deployment), PollingGrid)
    simulation = InMemoryGrid.__new__(InMemoryGrid)
    assert for_study(simulation) is simulation
