"""Sample one virtual patient on a site's acquisition grid, in memory (no DICOM).

``synthesize_patient`` is the single source of the pixel data: the cohort writer turns its result into DICOM,
and the calibration uses it directly. Order: latents -> anatomy + tumour -> per-sequence log-signal on the
sub-sampled grid (3 samples across each slice thickness) -> slice-profile average -> contrast gamma and 3 T
compression -> bias field -> Rician noise -> site scale -> quantisation (stored integers and RescaleSlope).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simulations.synth import anatomy as A
from simulations.synth.intensity import column, log_signal
from simulations.synth.latents import ClassContrast, Latents, draw_latents
from simulations.synth.site_profile import SiteProfile
from simulations.synth.tumour import TextureField, TumourParams, draw_tumour, paint_lesions

SUBSAMPLES = (-1.0 / 3.0, 0.0, 1.0 / 3.0)  # fractions of the slice thickness along the normal


def rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """3x3 rotation: yaw about z (S), pitch about x (L), roll about y (P)."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class SeriesGeometry:
    """Geometry of one axial(-oblique) series, slices sorted along the normal (ascending ``normal . IPP``).

    ``row_dir`` = IOP[0:3] (direction of increasing column index), ``col_dir`` = IOP[3:6]; ``pixel_spacing`` =
    (row spacing, column spacing) as in DICOM PixelSpacing; ``shape`` = (Z, H, W).
    """

    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    ipp0: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    shape: tuple[int, int, int]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def iop(self) -> list[float]:
        return [round(float(v), 8) for v in (*self.row_dir, *self.col_dir)]

    def ipp(self, k: int) -> list[float]:
        return [round(float(v), 5) for v in np.asarray(self.ipp0) + k * self.slice_spacing * self.normal]

    def affine(self) -> np.ndarray:
        """4x4 voxel (k, j, i) = (slice, row, column) -> LPS mm."""
        aff = np.eye(4)
        aff[:3, 0] = self.normal * self.slice_spacing
        aff[:3, 1] = np.asarray(self.col_dir) * self.pixel_spacing[0]
        aff[:3, 2] = np.asarray(self.row_dir) * self.pixel_spacing[1]
        aff[:3, 3] = self.ipp0
        return aff

    def points(self, offsets_mm: tuple[float, ...] = (0.0,)) -> np.ndarray:
        """float32 (Z, S, H, W, 3) LPS mm of voxel centres shifted by each offset along the normal."""
        nz, nh, nw = self.shape
        k = np.arange(nz, dtype=np.float32)[:, None, None, None, None] * self.slice_spacing
        s = np.asarray(offsets_mm, dtype=np.float32)[None, :, None, None, None]
        j = np.arange(nh, dtype=np.float32)[None, None, :, None, None] * self.pixel_spacing[0]
        i = np.arange(nw, dtype=np.float32)[None, None, None, :, None] * self.pixel_spacing[1]
        n = self.normal.astype(np.float32)
        return (
            np.asarray(self.ipp0, np.float32)
            + (k + s) * n
            + j * np.asarray(self.col_dir, np.float32)
            + i * np.asarray(self.row_dir, np.float32)
        )


def site_geometry(profile: SiteProfile, rng: np.random.Generator) -> SeriesGeometry:
    """The site's axial slab (site tilt about L-R), centred on the nasopharynx with a small per-study jitter."""
    rot = rotation(0.0, profile.tilt_deg, 0.0)
    row, col = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 1.0, 0])
    normal = np.cross(row, col)
    nz, n = profile.n_slices, profile.matrix
    centre = np.array([0.0, 6.0, 2.0]) + rng.uniform(-3, 3, size=3)
    ipp0 = (
        centre
        - (n - 1) / 2 * profile.pixel_mm * (row + col)
        - (nz - 1) / 2 * profile.slice_spacing_mm * normal
    )
    return SeriesGeometry(
        row_dir=tuple(float(v) for v in row),
        col_dir=tuple(float(v) for v in col),
        ipp0=tuple(float(v) for v in ipp0),
        pixel_spacing=(profile.pixel_mm, profile.pixel_mm),
        slice_spacing=profile.slice_spacing_mm,
        slice_thickness=profile.slice_thickness_mm,
        shape=(nz, n, n),
    )


@dataclass
class PatientPhantom:
    """One sampled patient. Images are float32 (Z, H, W) real-world values (stored * slope), sorted along the
    slice normal; ``stored`` are the uint16 integers a DICOM file holds; masks are uint8 (Z, H, W) {0, 1}."""

    label: int
    latents: Latents
    tumour: TumourParams
    geometry: SeriesGeometry
    images: dict[str, np.ndarray]
    stored: dict[str, np.ndarray]
    rescale_slope: float
    mask: np.ndarray
    node_mask: np.ndarray
    muscle_mask: np.ndarray
    background_mask: np.ndarray
    pose: dict[str, float] = field(default_factory=dict)
    anatomy: A.AnatomyParams | None = None

    def anatomical(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS points (..., 3) into this patient's anatomical frame (inverse head pose)."""
        p = self.pose
        rot = rotation(p["yaw"], p["pitch"], p["roll"]).astype(np.float32)
        shift = np.array([p["shift_x"], p["shift_y"], p["shift_z"]], dtype=np.float32)
        return (lps.astype(np.float32) - shift) @ rot


def bias_field(rng: np.random.Generator, shape: tuple[int, int, int], sd: float) -> np.ndarray:
    """float32 multiplicative field exp(sum c_ijl x^i y^j z^l), i + j + l <= 3, on [-1, 1]^3 grid coordinates."""
    zz, yy, xx = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    zz, yy, xx = zz[:, None, None], yy[None, :, None], xx[None, None, :]
    log_b = np.zeros(shape, dtype=np.float32)
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                if i + j + k == 0:
                    continue
                coef = float(
                    np.clip(rng.normal(0, sd / 4), -0.5, 0.5)
                )  # 19 terms: keep the total within TorchIO's range
                log_b += coef * xx**i * yy**j * zz**k
    return np.exp(log_b)


FAT_SAT_COLUMNS = (2, 3)  # t2fs, t1ce_fs (see intensity.COLUMNS)
FAT_STRUCTURES = (A.SUBCUT_FAT, A.DEEP_FAT, A.PPS_FAT, A.MARROW, A.CLIVUS_MARROW)


def fat_sat_failure(
    log_signal: np.ndarray, struct: np.ndarray, anat_pts: np.ndarray, rng: np.random.Generator
) -> None:
    """Fat suppression fails in a lateral or inferior zone (coil edge): fat there gets ratio U(1.5, 2.5), in place.

    The zone (|x| > 38 mm or z < -22 mm, anatomical) stays clear of the nasopharyngeal tumour, so the failure is a
    site/patient artefact and never a class cue.
    """
    zone = (np.abs(anat_pts[..., 0]) > 38.0) | (anat_pts[..., 2] < -22.0)
    log_signal[zone & np.isin(struct, FAT_STRUCTURES)] = np.float32(np.log(rng.uniform(1.5, 2.5)))


def ghosting(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pulsation ghosts: 1-2 copies at 2-6 % amplitude, shifted along the phase-encode (row, A-P) axis.

    Section 5.7 suggests 5-15 %; at that level ghosts over the tumour blur the small T1 class offset (sigma 0.08)
    enough to erase most of the T1+T2 advantage in calibration.

    ``signal``: float32 (Z, H, W); returns a new array.
    """
    out = signal.copy()
    h = signal.shape[1]
    for _ in range(int(rng.integers(1, 3))):
        shift = int(rng.integers(h // 6, h // 2))
        out += float(rng.uniform(0.02, 0.06)) * np.roll(signal, shift, axis=1)
    return out


def quantise(image: np.ndarray, profile: SiteProfile) -> tuple[np.ndarray, np.ndarray, float]:
    """(stored uint16, real float32 = stored * slope, slope). Values above the bit depth saturate."""
    slope = profile.rescale_slope or 1.0
    stored = np.clip(np.rint(image / slope), 0, 2**profile.bits_stored - 1).astype(np.uint16)
    return stored, (stored.astype(np.float64) * slope).astype(np.float32), slope


def synthesize_patient(
    profile: SiteProfile,
    label: int,
    rng: np.random.Generator,
    contrast: ClassContrast,
    sequences: tuple[str, ...] = ("t1", "t2", "t1ce"),
) -> PatientPhantom:
    """Sample one patient of class ``label`` (0 NPC, 1 NPL) at ``profile``'s site, all randomness from ``rng``."""
    lat = draw_latents(rng, label, contrast)
    anat = A.AnatomyParams.draw(rng)
    tp = draw_tumour(rng, lat)
    texture = TextureField(rng, tp)
    pose = {
        "yaw": float(rng.uniform(-5, 5)),
        "pitch": float(rng.uniform(-5, 5)),
        "roll": float(rng.uniform(-3, 3)),
    }
    shift = rng.uniform(-4, 4, size=3).astype(np.float32)
    rot = rotation(pose["yaw"], pose["pitch"], pose["roll"]).astype(np.float32)
    geom = site_geometry(profile, rng)
    offsets = tuple(f * profile.slice_thickness_mm for f in SUBSAMPLES)
    anat_pts = (geom.points(offsets) - shift) @ rot  # row-vector form of rot.T @ (p - shift)
    struct, depth = paint_lesions(anat_pts, A.structure_map(anat_pts, anat), tp)
    mask = (np.isin(struct, (A.TUMOUR, A.NECROSIS)).mean(axis=1) >= 0.5).astype(np.uint8)
    node_mask = ((struct == A.NODE).mean(axis=1) >= 0.5).astype(np.uint8)
    muscle_mask = np.isin(struct, A.REFERENCE_MUSCLES).all(axis=1).astype(np.uint8)
    background_mask = (struct == A.BACKGROUND).all(axis=1).astype(np.uint8)
    images, stored, slope = {}, {}, 1.0
    for seq in sequences:
        col = column(seq, profile.t2_fat_sat, profile.t1ce_fat_sat)
        ls = log_signal(seq, col, struct, depth, anat_pts, lat, tp, texture)
        if col in FAT_SAT_COLUMNS and rng.random() < 0.3:
            fat_sat_failure(ls, struct, anat_pts, rng)
        ls *= profile.gamma[seq] * (0.9 if profile.field_t >= 3.0 and seq in ("t1", "t1ce") else 1.0)
        signal = np.exp(ls).mean(axis=1) * bias_field(rng, geom.shape, profile.bias_sd)
        if rng.random() < 0.15:
            signal = ghosting(signal, rng)
        sigma = 1.0 / profile.snr
        noisy = np.hypot(
            signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32),
            sigma * rng.standard_normal(signal.shape, dtype=np.float32),
        )
        stored[seq], images[seq], slope = quantise(noisy * profile.muscle_level, profile)
    return PatientPhantom(
        label=label,
        latents=lat,
        tumour=tp,
        geometry=geom,
        images=images,
        stored=stored,
        rescale_slope=slope,
        mask=mask,
        node_mask=node_mask,
        muscle_mask=muscle_mask,
        background_mask=background_mask,
        pose={**pose, "shift_x": float(shift[0]), "shift_y": float(shift[1]), "shift_z": float(shift[2])},
        anatomy=anat,
    )
