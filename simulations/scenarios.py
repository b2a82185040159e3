"""Scenario presets of the local federated simulation (``nasofl-sim run --preset NAME``).

A scenario = how to generate the synthetic hospitals (``shared.data.synth``) + run-config overrides on top of
the defaults in pyproject.toml ``[tool.flwr.app.config]``. What the generator cannot yet vary per site is said
in the description (scanner profiles are always drawn per site; per-site prevalence varies by +-0.08 only).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from shared.errors import ConfigError

SEED_NPL_FRACTION = 142 / 434


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    patients: tuple[int, ...]  # one count per site
    npl_fraction: float = SEED_NPL_FRACTION
    difficulty: float = 1.0
    run_config: dict[str, bool | int | float | str] = field(default_factory=dict)

    @property
    def sites(self) -> int:
        return len(self.patients)


_TOY = {
    "seg-rounds": 1,
    "cls-rounds": 1,
    "seg-image-size": 32,
    "seg-slices-per-patient": 4,
    "cls-arch": "resnet18",
    "cls-image-size": 32,
    "cls-slices-per-patient": 2,
    "hist-bins": 100,
    "datasets": "t2,t1+t2",
}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "default",
            "3 hospitals x 24 patients, FedAvg, defaults of pyproject.toml (1 local epoch per round)",
            (24, 24, 24),
        ),
        Scenario(
            "toy",
            "2 hospitals x 10 patients, 1 round per stage, 32 px, 2 datasets: for tests",
            (10, 10),
            run_config=dict(_TOY),
        ),
        Scenario(
            "alike",
            "3 hospitals of equal size and prevalence (scanner profiles still differ: generator limit)",
            (24, 24, 24),
        ),
        Scenario(
            "scanners",
            "3 hospitals with different scanners, FedBN keeps each site's normalisation layers",
            (24, 24, 24),
            run_config={"fedbn": True},
        ),
        Scenario(
            "label-skew",
            "rarer NPL overall (20%); per-site prevalence spreads by the generator's +-0.08 only, FedProx",
            (24, 24, 24),
            npl_fraction=0.2,
            run_config={"strategy": "fedprox"},
        ),
        Scenario(
            "unequal",
            "very unequal sizes (60 / 20 / 8 patients), sample-weighted FedAvg",
            (60, 20, 8),
        ),
        Scenario(
            "many-sites",
            "10 hospitals x 10 patients, robust aggregation (trimmed mean), min-sites 6",
            (10,) * 10,
            run_config={"strategy": "fedtrimmedavg", "min-sites": 6},
        ),
        Scenario(
            "eval-only",
            "3 training hospitals + hospital-d only evaluates (how the model travels to a new hospital)",
            (24, 24, 24, 20),
            run_config={"eval-only-sites": "hospital-d"},
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        hint = difflib.get_close_matches(name, list(SCENARIOS), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"--preset {name!r} is unknown{extra}: expected one of {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
