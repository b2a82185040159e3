"""Central (client-level) DP: Flower's ``DifferentialPrivacyClientSideFixedClipping`` around a nasofl strategy.

What Flower's wrapper does, and we keep: it puts ``clipping_norm`` into every training instruction, the site's
``fixedclipping_mod`` (``client.app``, on the train handlers only) clips the site's update ``w_site - w_global`` to
that L2 norm, and Gaussian noise of std ``noise_multiplier x clipping_norm / n`` is added to every array of the
averaged model (``n`` = sites averaged in the round).

What we change, and why:

- Flower's wrapper skips the whole round when ANY reply is an error (a site refusing or down would stall DP
  training); here the inner :class:`~server.strategies.base.StageMixin` drops failed and rejected replies first
  (as without DP, ``min-sites`` still ends the run) and the noise is calibrated to the ``n`` that contributed;
- the server clips every update again (idempotent for a site whose mod ran), so a site without the mod cannot
  enlarge the sensitivity;
- the inner strategy averages uniformly (``update-weight`` = 1), so one site moves the mean by at most C/n.

Each aggregated round is one Gaussian release on the sites' data (:attr:`releases` counts this stage's);
:func:`server.privacy.privacy_summary` composes every training round of every stage into one epsilon whose unit
is ONE SITE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.differential_privacy import compute_clip_model_update

from server.strategies.base import EvalRound, StageMixin, TrainRound
from shared import protocol as P

log = logging.getLogger(__name__)


class CentralDP(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper around one stage's :class:`StageMixin` strategy."""

    strategy: StageMixin

    def __init__(self, strategy: StageMixin, noise_multiplier: float, clipping_norm: float) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self.releases = 0

    # ---- what the study reads of a strategy: forwarded to the wrapped one ----------------------------

    def setup_stage(self, **kwargs) -> None:
        self.strategy.setup_stage(**kwargs)

    @property
    def last_train(self) -> TrainRound | None:
        return self.strategy.last_train

    @property
    def last_eval(self) -> EvalRound | None:
        return self.strategy.last_eval

    @property
    def unavailable(self) -> set[int]:
        return self.strategy.unavailable

    def strategy_state(self) -> dict[str, dict[str, np.ndarray]]:
        return self.strategy.strategy_state()

    def load_strategy_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        self.strategy.load_strategy_state(state)

    # ---- aggregation ----------------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.current_arrays = arrays  # the updates are clipped relative to these at aggregation
        return super().configure_train(server_round, arrays, config, grid)

    def _clipped(self, msg: Message) -> Message:
        """The reply with its update clipped to ``clipping_norm`` (left as is when keys or shapes differ: the
        inner strategy's update check rejects it then)."""
        if msg.has_error() or len(msg.content.array_records) != 1:
            return msg
        current = self.current_arrays
        key, record = next(iter(msg.content.array_records.items()))
        if list(record.keys()) != list(current.keys()):
            return msg
        update = record.to_numpy_ndarrays()
        base = current.to_numpy_ndarrays()
        if any(u.shape != b.shape for u, b in zip(update, base, strict=True)):
            return msg
        update = [u.astype(np.float64) for u in update]
        compute_clip_model_update(update, [b.astype(np.float64) for b in base], self.clipping_norm)
        msg.content[key] = ArrayRecord(  # in place, as Flower's server-side clipping wrapper does
            {
                k: Array(np.asarray(u, dtype=b.dtype))
                for k, u, b in zip(record.keys(), update, base, strict=True)
            }
        )
        return msg

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [self._clipped(m) for m in replies]
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        rec = self.strategy.last_train
        self.num_sampled_clients = max(1, len(rec.contributed) if rec is not None else 1)
        arrays = self._add_noise_to_aggregated_arrays(arrays)
        self.releases += 1
        log.info(
            "central DP: round %s release %s, %s sites averaged, noise std %.4g",
            server_round,
            self.releases,
            self.num_sampled_clients,
            self.noise_multiplier * self.clipping_norm / self.num_sampled_clients,
        )
        return arrays, metrics


#: the metric the inner strategy weights by under central DP (every site sends 1)
UNIFORM_WEIGHT_KEY = P.UPDATE_WEIGHT
