"""Scenario presets of the local federated simulation (``nasofl-sim run --preset NAME``).

A scenario = how to generate the synthetic hospitals (``simulations.synth``) + run-config overrides on top of
the defaults in pyproject.toml ``[tool.flwr.app.config]``. Unless a scenario says otherwise, each site draws its
own scanner and its NPL prevalence spreads +-0.08 around ``npl_fraction``; ``same_scanner`` gives every site
hospital-a's scanner and protocol (export dialects stay per site), ``npl_per_site`` fixes each site's NPL share.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from shared.errors import ConfigError

SEED_NPL_FRACTION = 142 / 434

#: patients of the default scenario's evaluation-only hospital: its test set's 95% AUC CIs are about +-0.1 wide
#: (the three training hospitals' pooled test split holds about 24 patients, CIs +-0.2 to +-0.3); an external
#: site costs one final test per stage, no per-round work (server/sites.py ``participants``)
EXTERNAL_TEST_PATIENTS = 90

#: classifiers per dataset of the seed-size scenario (``cls-ensemble``): 3 x the classifier's time, which the
#: default run's 15-minute budget cannot afford
SEED_SIZE_ENSEMBLE = 3


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    patients: tuple[int, ...]  # one count per site
    npl_fraction: float = SEED_NPL_FRACTION
    difficulty: float = 1.0
    run_config: dict[str, bool | int | float | str] = field(default_factory=dict)
    same_scanner: bool = False  # -> CohortConfig.same_scanner
    npl_per_site: tuple[float, ...] | None = None  # -> CohortConfig.npl_fraction_per_site

    @property
    def sites(self) -> int:
        return len(self.patients)


_TOY = {
    "seg-rounds": 1,
    "cls-rounds": 1,
    "seg-image-size": 32,
    "seg-slices-per-patient": 4,
    "seg-augment": "none",  # one segmenter round learns too little from augmented slices for the tests' masks
    "cls-arch": "resnet18",
    "cls-slices-per-patient": 2,
    "cls-epochs": 1,
    "cls-pretrain-rounds": 0,  # the default's pretraining rounds would double a toy study's classifier rounds
    "cls-pretrain-epochs": 0,
    "hist-bins": 100,
    "datasets": "t2,t1+t2",
}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "default",
            "3 training hospitals x 40 patients (about 24 pooled test patients) and hospital-d, 90 patients that "
            "only evaluate (an external test set: 95% CIs about +-0.1), FedAvgM, defaults of pyproject.toml",
            (40, 40, 40, EXTERNAL_TEST_PATIENTS),
            run_config={"eval-only-sites": "hospital-d"},
        ),
        Scenario(
            "toy",
            "2 hospitals x 10 patients, 1 round per stage, 32 px, 2 datasets: for tests",
            (10, 10),
            run_config=dict(_TOY),
        ),
        Scenario(
            "alike",
            "3 hospitals x 24 patients, one scanner and protocol for all, 8 NPL each (33%), FedAvgM",
            (24, 24, 24),
            same_scanner=True,
            npl_per_site=(1 / 3, 1 / 3, 1 / 3),
        ),
        Scenario(
            "scanners",
            "3 hospitals with different scanners, FedBN keeps each site's normalisation layers",
            (24, 24, 24),
            run_config={"fedbn": True},
        ),
        Scenario(
            "label-skew",
            "3 hospitals x 24 patients, NPL 10% / 33% / 60% (2 / 8 / 14 patients), FedProx",
            (24, 24, 24),
            run_config={"strategy": "fedprox"},
            npl_per_site=(0.10, 0.33, 0.60),
        ),
        Scenario(
            "unequal",
            "very unequal sizes (60 / 20 / 8 patients), sample-weighted FedAvgM",
            (60, 20, 8),
        ),
        Scenario(
            "many-sites",
            "10 hospitals x 10 patients, robust aggregation (trimmed mean), min-sites 6",
            (10,) * 10,
            run_config={"strategy": "fedtrimmedavg", "min-sites": 6},
        ),
        Scenario(
            "large",
            "3 hospitals x 70 patients (the centralized default preset's cohort), the default settings: for "
            "`nasofl-sim compare` with about 40 pooled test patients (the default's 24 make AUC ratios noise)",
            (70, 70, 70),
        ),
        Scenario(
            "seed-size",
            "3 hospitals x 145 patients (435: the seed study had 434), each classifier an ensemble of 3 ResNets "
            "and a logistic regression on the tumour's core level (`cls-ensemble = 3`, `cls-linear-member = true`): "
            "for `nasofl-sim compare` with about 86 pooled test patients (95% CIs about +-0.09 instead of +-0.18)",
            (145, 145, 145),
            # measured at this size (README Results): each raised pooled T1WI+T2WI validation on 3 of 3 cohorts,
            # federated at parity; DP refuses both, so a DP run of this scenario needs --set cls-ensemble=1 --set
            # cls-linear-member=false (one refusal names both)
            run_config={"cls-ensemble": SEED_SIZE_ENSEMBLE, "cls-linear-member": True},
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
