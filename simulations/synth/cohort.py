"""Generate a whole synthetic cohort: one folder per virtual hospital plus ``_truth`` for tests.

Layout of ``OUT_DIR``:

- ``<site>/`` for each hospital ("hospital-a", "hospital-b", ...): DICOM files (naming per site, see
  ``study_writer``), ``labels.csv`` (``patient_id,diagnosis`` with NPC / NPL) and, at one site,
  ``site_mapping.json`` (format in ``simulations.synth``'s package docstring).
- ``_truth/<site>/<patient_id>.npz`` (never read by ingestion): per written sequence ``<seq>_series_uid``,
  ``<seq>_image`` (float32 (Z, H, W) real-world values, slices sorted along the normal), ``<seq>_iop`` (6,),
  ``<seq>_ipp0`` (3,) first slice, ``<seq>_spacing`` (slice, row, column) mm, ``<seq>_affine`` (4, 4) voxel
  (k, j, i) -> LPS; ``sequences``; ``label``; ``truth_mask`` (uint8 (Z, H, W), always); when contoured also
  ``mask`` (= truth_mask on the contoured series' grid), ``mask_sequence``, ``mask_series_uid``,
  ``mask_roi_name`` and ``node_mask`` when a GTVnd ROI was written.
- ``_truth/cohort.json``: config, site profiles, per-patient class, latent scores, tumour features, contoured.
"""

from __future__ import annotations

import csv
import json
import logging
import numbers
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.errors import ConfigError
from simulations.synth.dicom_series import StudyInfo, make_uid
from simulations.synth.latents import ClassContrast
from simulations.synth.sampling import synthesize_patient
from simulations.synth.site_mapping import write_site_mapping
from simulations.synth.site_profile import (
    DEFAULT_GRID,
    PAPER_GRID,
    GridPreset,
    SiteProfile,
    draw_site_profiles,
    site_name,
)
from simulations.synth.study_writer import SiteWriter, write_study

log = logging.getLogger(__name__)
SEED_NPL_FRACTION = 142 / 434


@dataclass(frozen=True)
class CohortConfig:
    """What to generate: one patient count per site in ``patients_per_site``.

    ``npl_fraction``: overall share of NPL patients, split over the sites by each one's drawn prevalence
    (seed ratio +-0.08). ``npl_fraction_per_site``: one NPL share per site (0..1) instead; a site of n
    patients then has round(f * n) NPL (halves round up; 0 or 1 gives a one-class site) and ``npl_fraction``
    is unused. ``same_scanner``: every site has hospital-a's scanner and protocol
    (``site_profile.SCANNER_FIELDS``: vendor, model, field, grid, tilt, fat saturation, intensity, bias,
    noise, bit depth), so the pixel values of all sites come from one distribution; each site keeps its own
    lossless export dialect (file layout, transfer syntax, tags, local codes, ROI naming, mask format), which
    ingestion undoes. ``undiagnosed_fraction``: the share of each site's patients (rounded) whose row is left out
    of ``labels.csv``, as a hospital's patients without a diagnosis (their images and contours are written;
    ``_truth`` keeps their class and marks them ``diagnosed: false``): what contrastive pretraining
    (``cls-pretrain-rounds``) learns from. Unset, these options leave the cohort of a seed unchanged.
    """

    sites: int = 3
    patients_per_site: tuple[int, ...] = (70, 70, 70)
    seed: int = 0
    difficulty: float = 1.0
    grid: GridPreset = DEFAULT_GRID
    contoured_fraction: float = 0.2
    min_contoured_per_site: int = 8
    npl_fraction: float = SEED_NPL_FRACTION
    npl_fraction_per_site: tuple[float, ...] | None = None
    same_scanner: bool = False
    undiagnosed_fraction: float = 0.0

    def __post_init__(self) -> None:
        if len(self.patients_per_site) != self.sites:
            raise ConfigError(
                f"patients_per_site has {len(self.patients_per_site)} entries for sites={self.sites}"
            )
        if any(n < 2 or n > 5000 for n in self.patients_per_site):
            raise ConfigError(
                f"patients per site {self.patients_per_site} out of range; expected 2..5000 each"
            )
        if not 0.0 <= self.undiagnosed_fraction < 1.0:
            raise ConfigError(
                f"undiagnosed share {self.undiagnosed_fraction} out of range; expected 0 <= share < 1 (the share of "
                "each hospital's patients left out of labels.csv)"
            )
        if not 0.0 <= self.contoured_fraction <= 1.0:
            raise ConfigError(f"contoured_fraction={self.contoured_fraction} out of range; expected 0..1")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed} out of range; expected 0 <= seed < 2^32")
        if not isinstance(self.same_scanner, bool):
            raise ConfigError(f"same_scanner={self.same_scanner!r} is not a bool; give True or False")
        if self.npl_fraction_per_site is not None:
            object.__setattr__(
                self, "npl_fraction_per_site", check_npl_per_site(self.npl_fraction_per_site, self.sites)
            )
        ClassContrast(k=self.difficulty)

    @classmethod
    def preset(
        cls,
        name: str,
        sites: int | None = None,
        patients: int | None = None,
        seed: int = 0,
        difficulty: float = 1.0,
        undiagnosed: float = 0.0,
    ) -> CohortConfig:
        """``default``: 3 x 70 patients at 96 px; ``paper``: 434 patients at 256 px (seed-like)."""
        if name == "default":
            n_sites, grid, total = sites or 3, DEFAULT_GRID, None
        elif name == "paper":
            n_sites, grid, total = sites or 3, PAPER_GRID, 434
        else:
            raise ConfigError(f"--preset {name!r} unknown; expected 'default' or 'paper'")
        if patients is not None:
            counts = (patients,) * n_sites
        elif total is not None:
            counts = tuple(total // n_sites + (1 if i < total % n_sites else 0) for i in range(n_sites))
        else:
            counts = (70,) * n_sites
        return cls(
            sites=n_sites,
            patients_per_site=counts,
            seed=seed,
            difficulty=difficulty,
            grid=grid,
            undiagnosed_fraction=undiagnosed,
        )


@dataclass
class CohortSummary:
    out_dir: Path
    per_site: dict[str, dict[str, int]] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def allocate_npl(profiles: list[SiteProfile], counts: tuple[int, ...], fraction: float) -> list[int]:
    """NPL count per site: overall round(fraction * total), split by each site's prevalence (largest remainder)."""
    total = round(fraction * sum(counts))
    weights = np.array([p.npl_prevalence * n for p, n in zip(profiles, counts, strict=True)])
    raw = weights / weights.sum() * total
    out = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - out))[: total - out.sum()]:
        out[i] += 1
    return [int(min(max(v, 1 if n > 2 else 0), n - 1)) for v, n in zip(out, counts, strict=True)]


def check_npl_per_site(fractions: object, sites: int) -> tuple[float, ...]:
    """``fractions`` as a tuple of floats, or ConfigError naming ``npl_fraction_per_site``."""
    if isinstance(fractions, str | bytes) or not hasattr(fractions, "__len__"):
        raise ConfigError(
            f"npl_fraction_per_site={fractions!r} is not a sequence; "
            "give one NPL fraction per site, e.g. (0.1, 0.3, 0.6)"
        )
    if len(fractions) != sites:
        raise ConfigError(
            f"npl_fraction_per_site has {len(fractions)} entries for sites={sites}; "
            "give exactly one NPL fraction per site (or leave it unset to use npl_fraction)"
        )
    out = []
    for i, value in enumerate(fractions):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"npl_fraction_per_site[{i}]={value!r} is out of range; expected a number 0 <= f <= 1 "
                f"(the share of NPL patients at {site_name(i)})"
            )
        out.append(float(value))
    return tuple(out)


def npl_counts(profiles: list[SiteProfile], config: CohortConfig) -> list[int]:
    """NPL patients per site: ``npl_fraction_per_site`` rounded per site if set, else ``allocate_npl``."""
    if config.npl_fraction_per_site is None:
        return allocate_npl(profiles, config.patients_per_site, config.npl_fraction)
    pairs = zip(config.npl_fraction_per_site, config.patients_per_site, strict=True)
    return [int(np.floor(f * n + 0.5)) for f, n in pairs]


def site_plan(profile: SiteProfile, n: int, n_npl: int, config: CohortConfig) -> list[dict]:
    """Patient ids, labels and contoured flags of one site (deterministic by seed and site)."""
    rng = np.random.default_rng([config.seed, profile.index, 99991])
    labels = np.array([1] * n_npl + [0] * (n - n_npl))
    rng.shuffle(labels)
    numbers = np.sort(rng.choice(99999, size=n, replace=False) + 1)
    n_contoured = min(n, max(config.min_contoured_per_site, round(config.contoured_fraction * n)))
    contoured = set(rng.choice(n, size=n_contoured, replace=False).tolist())
    # its own generator: the other draws (and so the files) do not depend on the undiagnosed share
    undiagnosed_rng = np.random.default_rng([config.seed, profile.index, 4711])
    n_undiagnosed = int(round(config.undiagnosed_fraction * n))
    undiagnosed = set(undiagnosed_rng.choice(n, size=n_undiagnosed, replace=False).tolist())
    return [
        {
            "index": i,
            "patient_id": f"{profile.id_prefix}{numbers[i]:05d}",
            "number": int(numbers[i]),
            "label": int(labels[i]),
            "contoured": i in contoured,
            "diagnosed": i not in undiagnosed,
        }
        for i in range(n)
    ]


def study_info(
    config: CohortConfig, profile: SiteProfile, entry: dict, rng: np.random.Generator
) -> StudyInfo:
    root = (config.seed, profile.index, entry["index"])
    year, month, day = int(rng.integers(2018, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return StudyInfo(
        patient_id=entry["patient_id"],
        patient_name=f"Synthetic^Patient{entry['number']}",
        birth_date=f"{year - int(rng.integers(25, 75))}{month:02d}{day:02d}",
        sex="M" if rng.random() < 0.7 else "F",
        study_uid=make_uid(*root, "study"),
        frame_uid=make_uid(*root, "frame"),
        study_date=f"{year}{month:02d}{day:02d}",
        study_time=f"{int(rng.integers(8, 17)):02d}{int(rng.integers(0, 60)):02d}00",
        accession=f"A{config.seed % 1000:03d}{profile.index:02d}{entry['index']:06d}",
        uid_root=root,
    )


def cohort_site_profiles(config: CohortConfig) -> list[SiteProfile]:
    """The site profiles ``config`` draws (deterministic in its seed): what :func:`generate_cohort` writes from."""
    return draw_site_profiles(
        config.seed,
        config.sites,
        config.grid,
        config.npl_fraction,
        same_scanner=config.same_scanner,
        npl_per_site=config.npl_fraction_per_site,
    )


def generate_cohort(out_dir: Path, config: CohortConfig, progress: bool = True) -> CohortSummary:
    """Write every site folder and ``_truth``. Deterministic: the same config writes the same pixel data and UIDs."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    profiles = cohort_site_profiles(config)
    npl = npl_counts(profiles, config)
    contrast = ClassContrast(k=config.difficulty)
    summary = CohortSummary(out_dir=out_dir)
    records: list[dict] = []
    bar = tqdm(total=sum(config.patients_per_site), desc="synth", unit="patient", disable=not progress)
    for profile, n, n_npl in zip(profiles, config.patients_per_site, npl, strict=True):
        site_dir = out_dir / profile.name
        truth_dir = out_dir / "_truth" / profile.name
        truth_dir.mkdir(parents=True, exist_ok=True)
        writer = SiteWriter(site_dir=site_dir, profile=profile)
        plan = site_plan(profile, n, n_npl, config)
        for entry in plan:
            rng = np.random.default_rng([config.seed, profile.index, entry["index"]])
            ph = synthesize_patient(profile, entry["label"], rng, contrast)
            study = study_info(config, profile, entry, rng)
            truth = write_study(writer, study, ph, rng, entry["contoured"])
            save_npz(truth_dir / f"{entry['patient_id']}.npz", truth)
            records.append(
                {
                    "site": profile.name,
                    "patient_id": entry["patient_id"],
                    "label": entry["label"],
                    "diagnosis": "NPL" if entry["label"] else "NPC",
                    "contoured": entry["contoured"],
                    "diagnosed": entry["diagnosed"],
                    "latents": asdict(ph.latents),
                    "tumour": ph.tumour.as_dict(),
                    "pose": ph.pose,
                    "tumour_voxels": int(ph.mask.sum()),
                    "series_uids": {s: truth[f"{s}_series_uid"].item() for s in truth["sequences"].tolist()},
                }
            )
            bar.update(1)
        with open(site_dir / "labels.csv", "w", newline="") as fh:
            rows = csv.writer(fh)
            rows.writerow(["patient_id", "diagnosis"])
            for entry in plan:
                if entry["diagnosed"]:
                    rows.writerow([entry["patient_id"], "NPL" if entry["label"] else "NPC"])
        if profile.site_mapping:
            write_site_mapping(site_dir / "site_mapping.json", profile)
        summary.per_site[profile.name] = {
            "patients": n,
            "NPC": n - n_npl,
            "NPL": n_npl,
            "contoured": sum(e["contoured"] for e in plan),
            "undiagnosed": sum(not e["diagnosed"] for e in plan),
            "files": writer.files,
            "bytes": writer.bytes,
        }
        summary.files += writer.files
        summary.bytes += writer.bytes
        log.info("site %s: %d patients written (%d files)", profile.name, n, writer.files)
    bar.close()
    cfg = asdict(config)
    (out_dir / "_truth" / "cohort.json").write_text(
        json.dumps(
            {"config": cfg, "sites": [asdict(p) for p in profiles], "patients": records},
            indent=1,
            default=_json_default,
        )
    )
    summary.seconds = time.perf_counter() - start
    return summary


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` (readable with ``np.load``) but with zlib level 1: about 5x faster."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
