"""Quicker retries when Flower pulls an array that is still on its way.

Flower 1.42 moves a message's arrays as separate objects, and in three places a process asks for an array before it
has arrived: the ServerApp pulling a site's reply from the SuperLink (the reply is visible once the site pushed the
message, before its arrays), the SuperNode pulling an instruction from the SuperLink, and the ClientApp pulling its
task from the SuperNode (the SuperNode hands out the task as soon as the message is stored, then pulls the arrays
from the SuperLink; ``flwr/supernode/start_client_internal.py``). Each time Flower retries after 1 s, 2 s, 4 s ... up
to 10 s (``PULL_INITIAL_BACKOFF`` / ``PULL_BACKOFF_CAP``, ``flwr/supercore/constant.py``), so an array that arrived
just after a retry waits up to as long again. :func:`quicken` wraps one module's pull function so it retries after
:data:`FIRST_RETRY_S`, backing off to :data:`MAX_RETRY_S` (one small local or loopback request each); Flower's overall
limit (2 h per message) stays, so a slow hospital link is never cut short.
"""

from __future__ import annotations

from types import ModuleType

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 0.5
_MARK = "nasofl_quick"


def quicken(module: ModuleType, name: str) -> None:
    """Replace ``module.<name>`` (Flower's ``pull_objects`` or ``pull_and_inflate_object_from_tree``, as that module
    imported it) by the same call with quicker retry defaults. Idempotent; this process only."""
    original = getattr(module, name)
    if getattr(original, _MARK, False):
        return

    def quick(*args, **kwargs):
        kwargs.setdefault("initial_backoff", FIRST_RETRY_S)
        kwargs.setdefault("backoff_cap", MAX_RETRY_S)
        kwargs.setdefault("max_tries_per_object", None)  # bounded by Flower's max_time (2 h) instead
        return original(*args, **kwargs)

    setattr(quick, _MARK, True)
    quick.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(module, name, quick)
