"""client.supernode_launch: Flower's SuperNode with a shorter idle poll and quicker retries of arrays in transit."""

from __future__ import annotations

import time

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supernode import start_client_internal as loop

from client.supernode_launch import IDLE_POLL_ENV, idle_poll_seconds, patch_supernode


@pytest.fixture
def patched():
    saved = loop.time, loop.pull_objects
    patch_supernode(0.2)
    yield
    loop.time, loop.pull_objects = saved


def test_only_flowers_idle_and_local_waits_are_shortened(patched, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    loop.time.sleep(3)  # the idle wait of Flower's loop (start_client_internal.py: time.sleep(3))
    loop.time.sleep(0.5)  # its waits for the ClientApp's reply (local state)
    loop.time.sleep(1.0)  # any other wait is Flower's
    assert slept == [0.2, 0.1, 1.0]
    assert loop.time.monotonic is time.monotonic and loop.time.time is time.time
    patch_supernode(0.2)  # idempotent: not wrapped twice
    assert loop.time.sleep.__self__._idle_s == 0.2


def test_an_array_still_uploading_is_retried_within_a_tenth_of_a_second(patched):
    tries = {"a": 0}

    def pull(object_id: str) -> bytes:
        tries[object_id] += 1
        if tries[object_id] < 3:
            raise ObjectUnavailableError(object_id)
        return b"content"

    t0 = time.perf_counter()
    assert loop.pull_objects(["a"], pull) == {"a": b"content"}
    # Flower's own retries come 1 s then 2 s later (about 3 s here)
    assert time.perf_counter() - t0 < 0.5 and tries["a"] == 3


@pytest.mark.parametrize("raw,expected", [("", 0.5), ("1.5", 1.5), ("0.05", 0.05)])
def test_the_idle_poll_comes_from_the_environment(raw, expected):
    assert idle_poll_seconds({IDLE_POLL_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["0", "10", "soon"])
def test_a_bad_idle_poll_is_refused_naming_the_variable(raw):
    with pytest.raises(SystemExit, match=IDLE_POLL_ENV):
        idle_poll_seconds({IDLE_POLL_ENV: raw})
