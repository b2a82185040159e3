"""One virtual hospital's scanner and export habits (domain reference, section 5.7).

Site effects never depend on class: they act after the anatomy, and only the NPL prevalence differs per site.
Quirks that ingestion must handle are spread deterministically over the first sites (so three sites already
exercise all of them) and drawn at random beyond that.

A profile has two halves. The scanner and protocol (``SCANNER_FIELDS``: vendor and model, field strength,
grid, tilt, fat saturation, intensity gamma, bias field, SNR, signal level, bit depth and rescale slope, DWI)
decide the pixel values; ``draw_site_profiles(same_scanner=True)`` gives every site hospital-a's. The export
dialect (file layout, transfer syntax, slice order and tags, local series codes, contrast-agent tags, ROI
naming, mask format, patient-ID prefix) is lossless and undone by ingestion, so it stays per site either way.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace

import numpy as np

from shared.errors import ConfigError

#: vendor -> (Manufacturer string, models, description style)
VENDORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "siemens": ("SIEMENS", ("Avanto", "Skyra", "Aera")),
    "ge": ("GE MEDICAL SYSTEMS", ("Signa HDxt", "Discovery MR750w")),
    "philips": ("Philips Medical Systems", ("Achieva", "Ingenia")),
    "uih": ("UIH", ("uMR 770", "uMR 780")),
    "canon": ("CANON_MEC", ("Vantage Orian",)),
}
VENDOR_ORDER = ("siemens", "ge", "philips", "uih", "canon")
LAYOUTS = ("tree", "flat", "by_series")
TRANSFER_SYNTAXES = ("explicit", "implicit", "jpeg2000")
ROI_NAMES = ("GTVnx", "GTV-NX", "GTVp", "GTV_nx_MR")
AGENTS = ("Gd-DTPA", "Magnevist", "Gadovist", "Omniscan", "Dotarem")
#: SiteProfile fields of the scanner and protocol (what ``same_scanner`` shares); the rest is export dialect.
SCANNER_FIELDS = (
    "vendor",
    "manufacturer",
    "model",
    "field_t",
    "matrix",
    "pixel_mm",
    "n_slices",
    "slice_thickness_mm",
    "slice_gap_mm",
    "tilt_deg",
    "t2_fat_sat",
    "t1ce_fat_sat",
    "gamma",
    "bias_sd",
    "snr",
    "muscle_level",
    "bits_stored",
    "rescale_slope",
    "dwi",
)


def site_name(index: int) -> str:
    """0 -> "hospital-a", 25 -> "hospital-z", 26 -> "hospital-aa"."""
    letters = string.ascii_lowercase
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = letters[rem] + name
    return f"hospital-{name}"


@dataclass(frozen=True)
class SiteProfile:
    """Scanner, protocol and DICOM dialect of one hospital. Geometry in mm, field in tesla."""

    index: int
    name: str
    vendor: str
    manufacturer: str
    model: str
    field_t: float
    matrix: int
    pixel_mm: float
    n_slices: int
    slice_thickness_mm: float
    slice_gap_mm: float
    tilt_deg: float
    t2_fat_sat: bool
    t1ce_fat_sat: bool
    gamma: dict[str, float]
    bias_sd: float
    snr: float
    muscle_level: float
    bits_stored: int
    rescale_slope: float | None
    npl_prevalence: float
    agent_mode: str  # "filled" | "empty" | "absent"
    agent_name: str
    transfer_syntax: str  # "explicit" | "implicit" | "jpeg2000"
    layout: str  # "tree" | "flat" | "by_series"
    instance_reversed: bool
    slice_location_omitted: bool
    empty_description_p: float
    roi_name: str
    node_roi: bool
    contour_image_refs: bool
    contour_sequence: str  # "t1ce" | "t2"
    mask_format: str  # "rtstruct" | "seg" (DICOM SEG via highdicom)
    dwi: bool
    site_mapping: bool
    id_prefix: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.matrix < 16 or self.n_slices < 3:
            raise ConfigError(
                f"site {self.name}: matrix={self.matrix}, n_slices={self.n_slices}; need >= 16 and >= 3"
            )
        if not 0.0 <= self.npl_prevalence <= 1.0:
            raise ConfigError(f"site {self.name}: npl_prevalence={self.npl_prevalence}; expected 0 <= p <= 1")

    @property
    def slice_spacing_mm(self) -> float:
        return self.slice_thickness_mm + self.slice_gap_mm


@dataclass(frozen=True)
class GridPreset:
    """Acquisition size of a preset: in-plane matrix and pixel size, slice count and thickness choices."""

    matrix: int = 96
    pixel_mm: tuple[float, float] = (1.9, 2.3)
    n_slices: tuple[int, int] = (14, 16)
    thickness_mm: tuple[float, ...] = (4.0, 4.5, 5.0)
    gap_mm: tuple[float, ...] = (0.0, 0.5)

    def __post_init__(self) -> None:
        if not 16 <= self.matrix <= 1024:
            raise ConfigError(f"grid matrix={self.matrix} out of range; expected 16..1024")


DEFAULT_GRID = GridPreset()
PAPER_GRID = GridPreset(matrix=256, pixel_mm=(0.8, 0.95), n_slices=(20, 24), thickness_mm=(3.0, 4.0, 5.0))


def draw_site_profiles(
    seed: int,
    n_sites: int,
    grid: GridPreset = DEFAULT_GRID,
    base_prevalence: float = 142 / 434,
    equal_prevalence: bool = False,
    same_scanner: bool = False,
    npl_per_site: tuple[float, ...] | None = None,
) -> list[SiteProfile]:
    """Draw ``n_sites`` hospital profiles from ``seed`` (deterministic). Quirks rotate over the first sites.

    ``same_scanner``: every site gets hospital-a's ``SCANNER_FIELDS`` (its dialect stays its own).
    ``npl_per_site``: each site's ``npl_prevalence`` set to these (one per site, 0..1) instead of drawn.
    Both act after all sites are drawn, so the random draws (and the default profiles) do not change.
    """
    if n_sites < 1 or n_sites > 52:
        raise ConfigError(f"--sites {n_sites} is out of range; expected 1..52")
    if npl_per_site is not None and len(npl_per_site) != n_sites:
        raise ConfigError(
            f"npl_per_site has {len(npl_per_site)} entries for {n_sites} sites; "
            "give one NPL fraction per site"
        )
    profiles = []
    for i in range(n_sites):
        rng = np.random.default_rng([seed, 7919, i])
        vendor = VENDOR_ORDER[i % len(VENDOR_ORDER)]
        manufacturer, models = VENDORS[vendor]
        field_t = 3.0 if (i % 2 == 1 if i < 3 else rng.random() < 0.5) else 1.5
        thick = float(rng.choice(grid.thickness_mm))
        # Site-level coverage: the slab must cover the nasopharynx (about -30..+35 mm).
        n_slices = int(rng.integers(grid.n_slices[0], grid.n_slices[1] + 1))
        prevalence = (
            base_prevalence
            if equal_prevalence
            else float(np.clip(base_prevalence + rng.uniform(-0.08, 0.08), 0.15, 0.5))
        )
        philips_like = vendor == "philips"
        profiles.append(
            SiteProfile(
                index=i,
                name=site_name(i),
                vendor=vendor,
                manufacturer=manufacturer,
                model=str(rng.choice(models)),
                field_t=field_t,
                matrix=grid.matrix,
                pixel_mm=round(float(rng.uniform(*grid.pixel_mm)), 4),
                n_slices=n_slices,
                slice_thickness_mm=thick,
                slice_gap_mm=float(rng.choice(grid.gap_mm)),
                tilt_deg=round(float(rng.uniform(-8, 8)), 2),
                t2_fat_sat=bool(i == 0 or rng.random() < 0.7),
                t1ce_fat_sat=bool(i != 2 and rng.random() < 0.9),
                gamma={s: round(float(rng.uniform(0.95, 1.05)), 3) for s in ("t1", "t2", "t1ce")},
                bias_sd=0.3 if field_t == 3.0 else 0.15,
                snr=float(rng.uniform(25, 50) if field_t == 3.0 else rng.uniform(15, 30)),
                muscle_level=float(10 ** rng.uniform(1.9, 2.8)),
                bits_stored=16 if philips_like or rng.random() < 0.5 else 12,
                rescale_slope=round(float(rng.uniform(1, 5)), 5) if philips_like else None,
                npl_prevalence=prevalence,
                agent_mode=("filled", "empty", "absent")[i % 3]
                if i < 3
                else str(rng.choice(["filled", "empty", "absent"], p=[0.6, 0.2, 0.2])),
                agent_name=str(rng.choice(AGENTS)),
                transfer_syntax=TRANSFER_SYNTAXES[i % 3] if i < 3 else "explicit",
                layout=LAYOUTS[i % 3],
                instance_reversed=i == 0 or (i >= 3 and rng.random() < 0.2),
                slice_location_omitted=i == 1 or (i >= 3 and rng.random() < 0.2),
                empty_description_p=0.3 if i == 1 else 0.0,
                roi_name=ROI_NAMES[i % len(ROI_NAMES)],
                node_roi=i % 2 == 0,
                contour_image_refs=i != 1,
                contour_sequence="t2" if i % 3 == 2 else "t1ce",
                mask_format="seg" if i == 3 or (i > 4 and rng.random() < 0.2) else "rtstruct",
                dwi=i % 2 == 0,
                site_mapping=i == 2,
                id_prefix="H" + site_name(i).split("-")[1].upper()[:2],
            )
        )
    if npl_per_site is not None:
        profiles = [replace(p, npl_prevalence=float(f)) for p, f in zip(profiles, npl_per_site, strict=True)]
    return share_scanner(profiles) if same_scanner else profiles


def share_scanner(profiles: list[SiteProfile]) -> list[SiteProfile]:
    """``profiles`` with the first one's ``SCANNER_FIELDS`` everywhere; dialect and prevalence stay."""
    first = profiles[0]
    scanner = {name: getattr(first, name) for name in SCANNER_FIELDS}
    return [first] + [
        replace(p, **{**scanner, "gamma": dict(first.gamma)}, notes=[*p.notes, f"scanner of {first.name}"])
        for p in profiles[1:]
    ]
