"""shared.quick_pulls: Flower's retries of an array still on its way, quicker, wherever nasofl runs Flower's code."""

from __future__ import annotations

import time

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from shared.quick_pulls import quicken


def _late(arrives_after: int):
    tries = {"n": 0}

    def pull(object_id: str) -> bytes:
        tries["n"] += 1
        if tries["n"] <= arrives_after:
            raise ObjectUnavailableError(object_id)
        return b"x"

    return pull, tries


def test_a_quickened_pull_retries_within_a_tenth_of_a_second(monkeypatch):
    monkeypatch.setattr(inflatable_utils, "pull_objects", inflatable_utils.pull_objects)
    quicken(inflatable_utils, "pull_objects")
    quicken(inflatable_utils, "pull_objects")  # idempotent: wrapped once
    assert inflatable_utils.pull_objects.__wrapped__.__name__ == "pull_objects"
    pull, tries = _late(2)
    t0 = time.perf_counter()
    assert inflatable_utils.pull_objects(["a"], pull) == {"a": b"x"}
    assert tries["n"] == 3 and time.perf_counter() - t0 < 0.5  # Flower's own: 1 s + 2 s


@pytest.mark.parametrize(
    "module,name,install",
    [
        ("flwr.superlink.grid.http_grid", "pull_objects", "server.polling_grid:quicker_object_pulls"),
        ("flwr.supernode.start_client_internal", "pull_objects", "client.supernode_launch:patch_supernode"),
    ],
)
def test_each_process_quickens_its_flower_pull(module, name, install, monkeypatch):
    import importlib

    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, name, getattr(mod, name))
    if hasattr(mod, "time"):
        monkeypatch.setattr(mod, "time", mod.time)
    where, fn = install.split(":")
    installer = getattr(importlib.import_module(where), fn)
    installer(*([0.5] if fn == "patch_supernode" else []))
    assert getattr(getattr(mod, name), "nasofl_quick", False)
