"""The study's site roster: who the sites are (counts only, never a patient id), who is offline, who sits out.

:class:`SiteRoster` asks the sites for their info (``query.info``) and ROI counts (``query.roi``), notes sites
that go offline or (re)join between rounds, and says once why a training site sits out a stage or dataset
(:func:`skip_reason`). ``server.study.Study`` holds one as ``study.roster``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from server.config import FederationConfig
from server.run_log import RunLog
from server.stage import Stage
from server.strategies.base import Participants, error_reasons, unavailable_nodes
from shared import protocol as P
from shared.config import parse_dataset_name
from shared.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SiteInfo:
    node_id: int
    name: str
    role: str  # P.ROLE_TRAIN | P.ROLE_EVAL_ONLY
    counts: dict[str, float] = field(default_factory=dict)
    roi: dict[str, float] = field(default_factory=dict)


def skip_reason(site: SiteInfo, stage: Stage) -> str:
    """Why a training site has no data for a stage, from its counts (never a patient id)."""
    if stage.is_segmenter:
        return "no patient with a tumour mask"
    if not site.roi:
        return "no ROI counts: query.roi failed at this site (see its site-failed line)"
    dataset = stage.dataset
    sequences = " and ".join(parse_dataset_name(dataset))
    missing = int(site.roi.get(P.roi_metric_key(dataset, P.ROI_MISSING_SEQUENCE), 0))
    empty = int(site.roi.get(P.roi_metric_key(dataset, P.ROI_EMPTY_PREDICTION), 0))
    labelled = int(site.counts.get(P.PATIENTS_NPC, 0) + site.counts.get(P.PATIENTS_NPL, 0))
    if missing and missing >= labelled:
        return f"no patient with {sequences}"
    return (
        f"no training patient with a {dataset} ROI ({missing} patient(s) without {sequences}, "
        f"{empty} with an empty predicted mask)"
    )


class SiteRoster:
    """The sites of one study and the messages that ask them about themselves.

    ``sites`` maps node id to :class:`SiteInfo`; ``away`` holds known sites' nodes that went offline, until they
    are listed again; ``skipped`` maps site name to ``{"seg" or dataset: why it sat out}`` (the study's outcome
    carries it). ``roi_content`` builds the ``query.roi`` content (the segmenter and its hash)
    each time that query is sent.
    """

    def __init__(
        self, grid: Grid, fed: FederationConfig, run_log: RunLog, roi_content: Callable[[], RecordDict]
    ) -> None:
        self.grid, self.fed, self.run_log, self.roi_content = grid, fed, run_log, roi_content
        self.sites: dict[int, SiteInfo] = {}
        self.away: set[int] = set()
        self.skipped: dict[str, dict[str, str]] = {}

    def send(self, messages: list[Message]) -> list[Message]:
        """Send to the sites; the replies that came within ``round-timeout-s``."""
        return list(self.grid.send_and_receive(messages, timeout=self.fed.round_timeout_s))

    # ---- who the sites are ------------------------------------------------------------------------

    def gather(self) -> None:
        """At the start of the study: wait for ``min-sites`` nodes, ask them for their info, log who answered."""
        self.sites = self.query_info(self.wait_for_sites())
        self.run_log.append(
            "sites", sites={s.name: {"role": s.role, **s.counts} for s in self.sites.values()}
        )

    def wait_for_sites(self) -> list[int]:
        deadline = time.time() + self.fed.wait_for_sites_s
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.fed.min_sites or time.time() >= deadline:
                return nodes
            log.info("waiting for sites: %s connected, min-sites=%s", len(nodes), self.fed.min_sites)
            time.sleep(2.0)

    def query_info(self, node_ids: list[int]) -> dict[int, SiteInfo]:
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=P.QUERY_INFO) for n in node_ids]
        replies = self.send(msgs)
        found: dict[int, SiteInfo] = {}
        for site, reason in error_reasons(replies, msgs, lambda n: f"node-{n}").items():
            log.warning("query.info: %s failed: %s", site, reason)
            self.run_log.append("site-failed", stage="info", site=site, reason=reason)
        self.mark_away(unavailable_nodes(replies, msgs), "info", "")
        for r in replies:
            if r.has_error():
                continue
            info = r.content.config_records[P.INFO]
            counts = {k: float(v) for k, v in r.content.metric_records[P.METRICS].items()}
            name, role = str(info[P.INFO_SITE]), str(info[P.INFO_ROLE])
            if role == P.ROLE_TRAIN and name in self.fed.eval_only_names:
                role = P.ROLE_EVAL_ONLY
            found[r.metadata.src_node_id] = SiteInfo(r.metadata.src_node_id, name, role, counts)
        names = [s.name for s in found.values()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(
                f"site name(s) {', '.join(twice)} answered from more than one node: give each SuperNode its own "
                "node config data-path (or site-name)"
            )
        # a site that rejoined under a new node id replaces its old entry
        self.sites = {k: v for k, v in self.sites.items() if v.name not in names}
        return found

    def query_roi(self, node_ids: list[int], sites: dict[int, SiteInfo] | None = None) -> None:
        """Send the segmenter to ``node_ids``; store each site's ROI counts on its :class:`SiteInfo`."""
        sites = sites if sites is not None else self.sites
        content = self.roi_content()
        msgs = [Message(content, dst_node_id=n, message_type=P.QUERY_ROI) for n in node_ids]
        replies = self.send(msgs)
        for site, reason in error_reasons(
            replies, msgs, lambda n: sites[n].name if n in sites else f"node-{n}"
        ).items():
            log.warning("query.roi: %s failed: %s", site, reason)
            self.run_log.append("site-failed", stage="roi", site=site, reason=reason)
        self.mark_away(unavailable_nodes(replies, msgs), "roi", "")
        for r in replies:
            if not r.has_error() and r.metadata.src_node_id in sites:
                sites[r.metadata.src_node_id].roi = {
                    k: float(v) for k, v in r.content.metric_records[P.METRICS].items()
                }

    def present(self) -> list[int]:
        """Known sites' nodes that are not offline."""
        return [n for n in self.sites if n not in self.away]

    def train_site_names(self) -> list[str]:
        return [s.name for s in self.sites.values() if s.role == P.ROLE_TRAIN]

    def site_of_node(self) -> dict[int, str]:
        return {n: s.name for n, s in self.sites.items()}

    def eval_only_nodes(self) -> list[int]:
        return [n for n, s in self.sites.items() if s.role == P.ROLE_EVAL_ONLY]

    def eval_only_site_names(self) -> list[str]:
        return [s.name for s in self.sites.values() if s.role == P.ROLE_EVAL_ONLY]

    def eligible(self, stage: Stage) -> list[int]:
        """Training sites with data for the stage (a tumour mask; a training ROI of the classifier's dataset)."""
        return [
            n for n, s in self.sites.items() if s.role == P.ROLE_TRAIN and stage.has_data(s.counts, s.roi)
        ]

    def participants(self, stage: Stage) -> Participants:
        """Who trains and who evaluates in ``stage``'s rounds, as the roster stands now."""
        return Participants(
            site_of_node=self.site_of_node(),
            train_nodes=frozenset(self.eligible(stage)),
            eval_nodes=frozenset(self.sites),
            eval_only_nodes=frozenset(self.eval_only_nodes()),
        )

    # ---- sites that leave, come back or sit out ---------------------------------------------------

    def check_sites(self, stage: str, dataset: str, roi: bool) -> dict[int, SiteInfo]:
        """Note sites that went offline; ask a site that (re)joined for its info (and ROI counts when ``roi``).

        A SuperNode restarted with the same node key keeps its node id: the SuperLink answers for it with
        NODE_UNAVAILABLE errors once its heartbeats stop, leaves it out of ``get_node_ids`` while it is
        offline, and lists it again once it has reconnected.
        """
        online = set(self.grid.get_node_ids())
        self.mark_away({n for n in self.sites if n not in online}, stage, dataset)
        ask = sorted(n for n in online if n not in self.sites or n in self.away)
        if not ask:
            return {}
        known = {s.name for s in self.sites.values()}
        found = self.query_info(ask)
        if roi and found:
            self.query_roi(list(found), found)
        self.sites.update(found)
        self.away &= set(self.sites) - set(found)
        for n, s in found.items():
            rejoined = s.name in known
            log.info("site %s %s (node %s, %s)", s.name, "rejoined" if rejoined else "joined", n, s.role)
            self.run_log.append(
                "site-joined", site=s.name, role=s.role, stage=stage, dataset=dataset, rejoined=rejoined
            )
        return found

    def refresh(self, stage: Stage) -> Participants | None:
        """Before each round: sites that (re)joined take part in it (see :meth:`check_sites`); None when no
        site joined (the strategy keeps its participants)."""
        found = self.check_sites(stage.kind.value, stage.dataset, roi=not stage.is_segmenter)
        if not found:
            return None
        self.note_skips(stage, found)
        return self.participants(stage)

    def mark_away(self, nodes: set[int], stage: str, dataset: str) -> None:
        """Known sites whose node is offline: logged once, asked for their info again when they are back."""
        for n in sorted(nodes - self.away):
            if n in self.sites:
                self.away.add(n)
                name = self.sites[n].name
                log.warning("site %s is offline (node %s): it takes part again once it reconnects", name, n)
                self.run_log.append("site-offline", site=name, stage=stage, dataset=dataset)

    def note_skips(self, stage: Stage, nodes: Iterable[int]) -> None:
        """Say once, in the server log and the run log, why a training site sits out a stage."""
        eligible = set(self.eligible(stage))
        key = stage.dataset or stage.kind.value
        for n in nodes:
            site = self.sites[n]
            said = self.skipped.get(site.name, {})
            if site.role != P.ROLE_TRAIN or n in eligible or n in self.away or key in said:
                continue
            reason = skip_reason(site, stage)
            self.skipped.setdefault(site.name, {})[key] = reason
            log.warning("site %s sits out %s: %s", site.name, key, reason)
            self.run_log.append(
                "site-skips-dataset",
                site=site.name,
                stage=stage.kind.value,
                dataset=stage.dataset,
                reason=reason,
            )
