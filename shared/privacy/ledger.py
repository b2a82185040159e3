"""A site's privacy ledger: what every study and stage has spent on the site's patients, across runs.

The ledger is a JSON file in the site's cache folder (``<cache>/privacy-ledger.json``, mode 0600, written
atomically). One entry per DP-SGD training round: study id, stage, dataset, round, steps, sampling rate, noise
multiplier, delta. It never holds a patient identifier. All entries are releases on the same patients, so the
site's total epsilon composes every entry (:mod:`shared.privacy.accounting`); the site's budget (node config
``privacy-budget-epsilon``) bounds that total, and a round that would exceed it is refused before it trains.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.errors import PrivacyBudgetError
from shared.privacy.accounting import Release, opacus_epsilon

LEDGER_NAME = "privacy-ledger.json"
UNIT_PATIENT = "one patient"
UNIT_SITE = "one site"


@dataclass(frozen=True)
class LedgerEntry:
    study: str
    stage: str
    dataset: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str
    unit: str
    recorded_at: float

    @property
    def release(self) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, self.steps)


class PrivacyLedger:
    """The ledger file of one site (read on creation, appended by :meth:`record`)."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / LEDGER_NAME
        self.entries: list[LedgerEntry] = []
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                self.entries = [LedgerEntry(**e) for e in raw["entries"]]
            except (ValueError, KeyError, TypeError) as err:
                # an unreadable ledger must not count as an empty one: that would reset the budget
                raise PrivacyBudgetError(
                    f"privacy ledger {self.path} is unreadable ({type(err).__name__}: {err}); the site cannot "
                    "know what it has spent: restore the file from a backup before training with DP"
                ) from None

    def epsilon(
        self, delta: float, accountant: str, study: str | None = None, extra: Release | None = None
    ) -> float:
        """Composed epsilon at ``delta`` of all entries (of one ``study`` when given), plus ``extra``."""
        releases = [e.release for e in self.entries if study is None or e.study == study]
        if extra is not None:
            releases.append(extra)
        return opacus_epsilon(releases, delta, accountant)

    def check_budget(
        self, site: str, budget: float | None, planned: Release, delta: float, accountant: str
    ) -> float:
        """Epsilon of the whole ledger with ``planned`` added; PrivacyBudgetError when it exceeds ``budget``."""
        total = self.epsilon(delta, accountant, extra=planned)
        if budget is not None and total > budget:
            spent = self.epsilon(delta, accountant)
            raise PrivacyBudgetError(
                f"site {site} refuses this round: its privacy ledger has spent epsilon {spent:.3f} "
                f"(unit: {UNIT_PATIENT}, delta {delta:.2e}) and this round would bring it to {total:.3f}, above "
                f"the site's budget {budget:g} (node config privacy-budget-epsilon); raise the budget only "
                "with the ethics board's consent, or lower dp-epsilon / rounds"
            )
        return total

    def record(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"entries": [asdict(e) for e in self.entries]}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def lines(
        self, delta: float | None = None, accountant: str = "rdp", budget: float | None = None
    ) -> list[str]:
        """Human-readable ledger (``nasofl-site privacy``): one line per entry, then the totals per study."""
        if not self.entries:
            return [f"{self.path}: no DP training recorded (no privacy spent)"]
        d = delta if delta is not None else min(e.delta for e in self.entries)
        out = [
            f"{self.path}: {len(self.entries)} DP-SGD rounds; unit: {UNIT_PATIENT}; epsilon at delta {d:.2e}",
            f"{'study':<14}{'stage':<6}{'dataset':<9}{'round':>6}{'steps':>7}{'q':>8}{'noise':>8}{'C':>6}",
        ]
        for e in self.entries:
            out.append(
                f"{e.study:<14}{e.stage:<6}{e.dataset or '-':<9}{e.round:>6}{e.steps:>7}{e.sample_rate:>8.3f}"
                f"{e.noise_multiplier:>8.3f}{e.max_grad_norm:>6.2f}"
            )
        for study in dict.fromkeys(e.study for e in self.entries):
            out.append(f"study {study}: epsilon {self.epsilon(d, accountant, study):.3f} ({UNIT_PATIENT})")
        total = self.epsilon(d, accountant)
        out.append(f"site total (all studies composed): epsilon {total:.3f} ({UNIT_PATIENT}, delta {d:.2e})")
        if budget is not None:
            out.append(
                f"budget {budget:g}: remaining epsilon {max(0.0, budget - total):.3f} ({UNIT_PATIENT})"
            )
        return out


def new_entry(
    *,
    study: str,
    stage: str,
    dataset: str,
    round: int,
    release: Release,
    max_grad_norm: float,
    delta: float,
    accountant: str,
) -> LedgerEntry:
    return LedgerEntry(
        study=study,
        stage=stage,
        dataset=dataset,
        round=round,
        steps=release.steps,
        sample_rate=release.sample_rate,
        noise_multiplier=release.noise_multiplier,
        max_grad_norm=max_grad_norm,
        delta=delta,
        accountant=accountant,
        unit=UNIT_PATIENT,
        recorded_at=time.time(),
    )
