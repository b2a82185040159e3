"""The site's SuperNode process: Flower's ``flower-supernode`` with a shorter idle poll and quicker object pulls.

    python -m client.supernode_launch [flower-supernode arguments]

``nasofl-site join`` runs this instead of the ``flower-supernode`` script. It is Flower's own SuperNode
(``flwr.supernode.cli.flower_supernode``, same arguments, same TLS and node authentication) with two waits cut:

- **Idle poll.** When the SuperLink has no message for the node, Flower 1.42's loop sleeps a fixed 3 s before asking
  again (``time.sleep(3)`` in ``flwr/supernode/start_client_internal.py``, no flag): each instruction of a round
  waits 1.5 s on average before the site even sees it, and a SecAgg+ round has four. Here the idle wait is
  ``NASOFL_SUPERNODE_IDLE_POLL_S`` (default 0.5 s; one small authenticated request per wait, through the
  coordinator's proxy).
- **Local waits.** The loop waits for the ClientApp's reply, and for each of its arrays, polling its own in-memory
  state every 0.5 s (``time.sleep(0.5)``, same file); here every :data:`LOCAL_POLL_S` (0.1 s).
- **Object pulls.** An instruction is visible on the SuperLink before the coordinator has uploaded its arrays;
  Flower then retries each array 1 s, 2 s, 4 s ... up to 10 s apart. Here the first retry comes after 0.05 s,
  backing off to 0.5 s (:mod:`shared.quick_pulls`); Flower's overall limit (2 h per message) is kept.

Nothing else changes: the process does exactly what ``flower-supernode`` does with the same arguments.
"""

from __future__ import annotations

import os
import sys
import time
from types import ModuleType

from shared.quick_pulls import quicken

IDLE_POLL_ENV = "NASOFL_SUPERNODE_IDLE_POLL_S"
DEFAULT_IDLE_POLL_S = 0.5
FLOWER_IDLE_SLEEP_S = 3  # the literal of Flower's idle wait
FLOWER_LOCAL_SLEEP_S = 0.5  # the literal of its waits for the ClientApp's reply and arrays (no network)
LOCAL_POLL_S = 0.1


def idle_poll_seconds(environ: dict[str, str] | os._Environ = os.environ) -> float:
    raw = environ.get(IDLE_POLL_ENV, "")
    if not raw:
        return DEFAULT_IDLE_POLL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 3.0:
        raise SystemExit(
            f"{IDLE_POLL_ENV}={raw!r}: give the SuperNode's idle poll in seconds, between 0.05 and 3 "
            f"(default {DEFAULT_IDLE_POLL_S})"
        )
    return value


class _IdleClock(ModuleType):
    """Stands in for the ``time`` module inside Flower's SuperNode loop: its 3 s idle sleep and 0.5 s local waits
    are shortened, nothing else."""

    def __init__(self, idle_s: float) -> None:
        super().__init__("time")
        self._idle_s = idle_s

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_SLEEP_S:
            seconds = self._idle_s
        elif seconds == FLOWER_LOCAL_SLEEP_S:
            seconds = LOCAL_POLL_S
        time.sleep(seconds)


def patch_supernode(idle_s: float) -> None:
    """Shorten Flower's idle poll and object-pull retries in this process (idempotent)."""
    from flwr.supernode import start_client_internal as loop

    if isinstance(loop.time, _IdleClock):
        return
    loop.time = _IdleClock(idle_s)
    quicken(loop, "pull_objects")


def main() -> None:
    from flwr.supernode.cli import flower_supernode

    patch_supernode(idle_poll_seconds())
    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
