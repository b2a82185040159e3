"""Test support for the federation tests: an in-process Flower Grid that runs the real ClientApp per node.

``LocalGrid`` implements flwr's ``Grid`` interface: messages built by the real ServerApp code go to the real
``client.app.app`` in this process (one ``Context`` per node, kept across messages like a SuperNode keeps
``context.state``). Every reply is recorded for inspection; nodes can be taken offline (the SuperLink's
NODE_UNAVAILABLE error then answers for them) and back online under the same node id. Used where a full
``flwr run`` would be too slow (resume, reply inspection); ``test_fed_simulation`` runs the real thing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.config import flatten_dict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from shared.app_config import app_defaults


def default_run_config() -> dict:
    """The run-config defaults of pyproject.toml, flattened as Flower does."""
    return flatten_dict(app_defaults())


def toy_run_config(cohort: Path, out: Path, **overrides) -> dict:
    """The toy scenario's run config on ``cohort`` (site folders), writing to ``out``; no wait for sites."""
    from simulations.scenarios import SCENARIOS

    rc = default_run_config()
    rc.update(
        {
            "sim-data-root": str(cohort),
            "sim-cache-root": str(cohort / "_cache"),
            "out-dir": str(out),
            **SCENARIOS["toy"].run_config,
            "wait-for-sites-s": 0.0,
        }
    )
    rc.update(overrides)
    return rc


class LocalGrid(Grid):
    def __init__(self, client_app, n_nodes: int, run_config: dict, first_node_id: int = 1001) -> None:
        self.client_app = client_app
        TaskIdentity.run_id = 1  # what flwr's runtime sets in a ServerApp process
        TaskIdentity.node_id = 1
        TaskIdentity.task_id = 1
        self.run_config = dict(run_config)
        self.contexts: dict[int, Context] = {}
        for i in range(n_nodes):
            node_id = first_node_id + i * 7
            self.contexts[node_id] = Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": i, "num-partitions": n_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self.offline: set[int] = set()
        # a message for which this returns True gets no reply, as when a site misses ``round-timeout-s``
        self.no_reply_to: Callable[[Message], bool] = lambda msg: False
        self.timeouts: list[float | None] = []
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self._pending: dict[str, Message] = {}

    # --- Grid interface ---------------------------------------------------------------------------
    def set_run(self, run) -> None:  # pragma: no cover - not used in-process
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(
        self, content, message_type, dst_node_id, group_id, ttl=None
    ) -> Message:  # pragma: no cover
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_src_node_id"] = 1
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for mid in message_ids:
            msg = self._pending.pop(mid)
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if self.no_reply_to(msg):
                continue
            if node in self.offline:  # what the SuperLink answers once the node's heartbeats have stopped
                reply = Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"), reply_to=msg
                )
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                self.replies.append(reply)
                out.append(reply)
                continue
            try:
                reply = self.client_app(message=msg, context=self.contexts[node])
            except Exception as ex:  # like the SuperNode: the exception text becomes an error reply
                reply = Message(Error(code=2, reason=f"{type(ex)}:<'{ex}'>"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            self.replies.append(reply)
            out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        # in node order, so that a test can script "this node drops after that one trained"
        ordered = sorted(messages, key=lambda m: m.metadata.dst_node_id)
        return self.pull_messages(list(self.push_messages(ordered)))


def server_context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
