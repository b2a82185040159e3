"""Reading the sites' replies of one round: who failed and why, who went offline, the evaluation statistics.

Error replies injected by the SuperLink come from the SuperLink's node id, so a reply is mapped back to its site
through ``reply_to_message_id`` and the instruction's ``dst_node_id``. No patient data here: reasons are the
sites' own scrubbed texts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.common.constant import ErrorCode

from server.update_check import eval_problem

log = logging.getLogger(__name__)


def error_reasons(
    replies: Iterable[Message], sent: list[Message], site_of: Callable[[int], str]
) -> dict[str, str]:
    """{site: error reason} for error replies, mapped back through the id of the message we sent.

    Error replies injected by the SuperLink (node unavailable) come from the SuperLink's node id, so the
    sender is found via ``reply_to_message_id`` -> the instruction's ``dst_node_id``.
    """
    by_id = {m.metadata.message_id: site_of(m.metadata.dst_node_id) for m in sent if m.metadata.message_id}
    out: dict[str, str] = {}
    for msg in replies:
        if not msg.has_error():
            continue
        site = by_id.get(msg.metadata.reply_to_message_id) or site_of(msg.metadata.src_node_id)
        out[site] = f"error reply (code {msg.error.code}): {_short(msg.error.reason)}"
    return out


def unavailable_nodes(replies: Iterable[Message], sent: list[Message]) -> set[int]:
    """Nodes whose instruction got the SuperLink's NODE_UNAVAILABLE error: a SuperNode that stopped sending
    heartbeats (killed, network lost) for HEARTBEAT_PATIENCE x 30 s, or that deactivated itself on SIGTERM."""
    dst = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
    return {
        dst[msg.metadata.reply_to_message_id]
        for msg in replies
        if msg.has_error()
        and msg.error.code == ErrorCode.NODE_UNAVAILABLE
        and msg.metadata.reply_to_message_id in dst
    }


def collect_eval_sums(
    replies: Iterable[Message],
    site_of: Callable[[int], str],
    sent_to: list[str],
    metric_keys: tuple[str, ...],
) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """Evaluation replies -> ({site: metrics}, {site: failure reason}); inconsistent replies count as failed."""
    sums: dict[str, dict[str, object]] = {}
    failed: dict[str, str] = {}
    for msg in replies:
        if msg.has_error():
            continue
        site = site_of(msg.metadata.src_node_id)
        recs = list(msg.content.metric_records.values())
        if len(recs) != 1 or (metric_keys and set(recs[0].keys()) != set(metric_keys)):
            failed[site] = "reply without the expected metric keys"
            continue
        problem = eval_problem(dict(recs[0]))
        if problem is not None:
            failed[site] = f"malformed evaluation reply: {problem}"
            log.warning("evaluation reply of %s REJECTED: %s", site, problem)
            continue
        sums[site] = dict(recs[0])
    for site in sent_to:
        if site not in sums and site not in failed:
            failed[site] = "no reply (error, timeout or disconnect)"
    return sums, failed


def _short(text: str, limit: int = 300) -> str:
    """One line; a site's own message (``SiteFailure: ...``) is kept, Ray's traceback preamble dropped."""
    text = " ".join(str(text).split())
    found = re.findall(r"SiteFailure(?:'>:<'|: )(.*?)(?:'>)?$", text)
    if found:
        text = found[-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
