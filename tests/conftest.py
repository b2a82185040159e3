"""Test order: the longest files first, so that under ``-n 2 --dist loadfile`` the two workers do not wait at the
end for one long file started last (the TLS deployment test alone takes ~3 min; measured with ``--durations``).
Order only: every test still runs, and each file's tests keep their own order."""

from __future__ import annotations

import pytest

#: files whose tests take the longest in all (seconds on the 2-core machine, stop 25): started first
LONGEST_FIRST: tuple[str, ...] = (
    "test_deploy_superlink.py",  # ~200 s, one test
    "test_fed_study.py",  # ~180 s over its tests
    "test_privacy.py",
    "test_deploy_boundary.py",
    "test_fed_simulation.py",
    "test_same_seed_same_study.py",
    "test_secure_aggregation.py",
)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the rest keep collection order
