"""The study's send-and-receive loop over Flower's grid: poll often, back off, outlast a transient SuperLink error.

Flower 1.42's deployment grid (``flwr/superlink/grid/http_grid.py``, ``HttpGrid.send_and_receive``) sleeps a fixed
3 s between two pulls of the replies, so every phase of a round waits on average 1.5 s (up to 3 s) after the last
site has answered. Its simulation grid polls every 0.1 s. :class:`PollingGrid` wraps whatever grid Flower hands
the ServerApp and keeps Flower's own push and pull calls; only the loop between them is ours:

- pull after ``FIRST_INTERVAL_S``, then back off by ``BACKOFF`` up to ``MAX_INTERVAL_S`` (a pull is one small
  request; with the SQLite state it is also one write transaction, hence the back-off), and start again from the
  short interval whenever a reply came in (the other sites are usually close behind);
- a pull the SuperLink answers with HTTP 500 is retried ``TRANSIENT_RETRIES`` times, ``RETRY_WAIT_S`` apart, with
  a WARNING line each time; the next failure ends the study with :class:`SuperLinkError`. The SuperLink answers
  500 to any error it did not expect; under load with ``--database`` (SQLite) it is typically ``sqlite3.
  OperationalError: database is locked``: Flower 1.42 waits at most 5 s for the file's write lock
  (``busy_timeout`` in ``flwr/supercore/constant.py``) and keeps every model array in that same file. Flower's
  own HTTP client retries 502/503/504 and connection errors by itself, not 500. Retrying a pull is safe when the
  SuperLink rolled the failed transaction back (the replies are still there, the case seen here); when it failed
  after marking replies delivered, those replies are lost and their sites count as not answering (a failed site,
  logged by the strategy), never as a silent success. A push is not retried: it may have been half stored.

A reply is visible on the SuperLink as soon as its site pushed the message, before the site has uploaded the
message's arrays (``store_message_and_object_tree`` pre-registers them, ``fleet_handlers.py``); Flower's grid then
pulls each array and, while one is not uploaded yet, retries after 1 s, 2 s, 4 s, up to 10 s apart
(``PULL_INITIAL_BACKOFF`` / ``PULL_BACKOFF_CAP``, ``flwr/supercore/constant.py``): a model that finished uploading
just after a retry waits up to twice its upload time. :func:`quicker_object_pulls` makes the grid's object pulls
retry after 0.05 s, backing off to 0.5 s (:mod:`shared.quick_pulls`); the overall limit stays Flower's (2 h per
message), so a slow hospital link is not cut short.

The timeout has Flower's meaning: the replies that came in by then are returned, the study's strategies count the
rest as failed sites. :func:`for_study` wraps only Flower's deployment grid: its simulation grid already polls every
0.1 s, and an in-process test grid answers at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import httpx
from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import HttpGrid

from shared.errors import NasoflError
from shared.quick_pulls import quicken

log = logging.getLogger(__name__)

FIRST_INTERVAL_S = 0.1
MAX_INTERVAL_S = 1.0
BACKOFF = 1.5
TRANSIENT_RETRIES = 5
RETRY_WAIT_S = 2.0
#: HTTP statuses of a SuperLink that failed on this request but may answer the next one
TRANSIENT_STATUS = frozenset({500})


def quicker_object_pulls() -> None:
    """Make Flower's deployment grid retry a not-yet-uploaded array after 0.05 s (backing off to 0.5 s) instead of
    1 s (to 10 s): :mod:`shared.quick_pulls`. Idempotent; affects only this process (the ServerApp)."""
    from flwr.superlink.grid import http_grid

    quicken(http_grid, "pull_objects")


class SuperLinkError(NasoflError):
    """The SuperLink kept failing a request the study cannot do without."""


class PollingGrid(Grid):
    """``grid`` with a faster, fault-tolerant ``send_and_receive``; everything else goes to ``grid`` unchanged.

    ``sleep`` and ``clock`` are ``time.sleep`` and ``time.monotonic`` outside tests.
    """

    def __init__(
        self,
        grid: Grid,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._grid = grid
        self._sleep = sleep
        self._clock = clock
        if isinstance(grid, HttpGrid):
            quicker_object_pulls()

    # ---- delegated unchanged ---------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._transient_retry("get-nodes", lambda: list(self._grid.get_node_ids()))

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._transient_retry("get-nodes", lambda: list(self._grid.get_nodes()))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    # ---- ours ------------------------------------------------------------------------------------------

    def _transient_retry(self, what: str, call: Callable[[], list]) -> list:
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                return call()
            except httpx.HTTPStatusError as err:
                status = err.response.status_code
                if status not in TRANSIENT_STATUS:
                    raise
                if attempt == TRANSIENT_RETRIES:
                    raise SuperLinkError(
                        f"the SuperLink answered HTTP {status} to {what} {attempt + 1} times in a row: see the "
                        "SuperLink's log for the cause (with --database, 'database is locked' means its SQLite "
                        "state file was busy for more than Flower's 5 s: run the SuperLink with "
                        "NASOFL_SUPERLINK_STATE=memory, deploy/README.md), then resume the study"
                    ) from err
                log.warning(
                    "SuperLink answered HTTP %s to %s (try %d of %d; with SQLite state usually 'database is "
                    "locked' under load, see the SuperLink's log): retrying in %.0f s",
                    status,
                    what,
                    attempt + 1,
                    TRANSIENT_RETRIES + 1,
                    RETRY_WAIT_S,
                )
                self._sleep(RETRY_WAIT_S)
        raise AssertionError("unreachable")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``, then pull their replies until all came in or ``timeout`` seconds passed."""
        pushed = list(self._grid.push_messages(messages))
        waiting = {message_id for message_id in pushed if message_id}
        if len(waiting) < len(pushed):
            log.warning(
                "the SuperLink did not accept %d of %d messages: their sites will count as not answering",
                len(pushed) - len(waiting),
                len(pushed),
            )
        deadline = None if timeout is None else self._clock() + timeout
        interval = FIRST_INTERVAL_S
        replies: list[Message] = []
        while waiting:
            got = self._transient_retry("pull-messages", lambda: list(self._grid.pull_messages(waiting)))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            if got:  # the other sites are usually close behind
                interval = FIRST_INTERVAL_S
            pause = interval
            if deadline is not None:
                left = deadline - self._clock()
                if left <= 0:
                    break
                pause = min(pause, left)
            self._sleep(pause)
            interval = min(interval * BACKOFF, MAX_INTERVAL_S)
        return replies


def for_study(grid: Grid) -> Grid:
    """The grid the study uses: Flower's deployment grid (``HttpGrid``) in a :class:`PollingGrid`, any other as it
    is."""
    return PollingGrid(grid) if isinstance(grid, HttpGrid) else grid
