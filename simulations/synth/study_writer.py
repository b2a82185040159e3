"""Write one patient's study (localiser, T1, T2, optional DWI, T1CE, optional RTSTRUCT or SEG) into a site folder.

The folder and file naming differ per site (``SiteProfile.layout``):

- ``tree``: ``<site>/export/<PatientID>/<StudyID>/<SeriesNumber>/IM0001.dcm``
- ``flat``: ``<site>/DICOM/I0000001`` (one folder, running numbers, no file extension)
- ``by_series``: ``<site>/<PatientID>_<StudyDate>/<description or S<n>>/<SOPInstanceUID>.dcm``
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulations.synth.dicom_series import (
    SeriesSpec,
    StudyInfo,
    acquisition_time,
    description,
    make_uid,
    mr_image,
    save,
    set_slice,
)
from simulations.synth.distractors import dwi_image, localiser_images
from simulations.synth.rtstruct_writer import rtstruct
from simulations.synth.sampling import PatientPhantom, SeriesGeometry
from simulations.synth.seg_writer import segmentation
from simulations.synth.site_profile import SiteProfile

MR_SEQUENCES = ("t1", "t2", "t1ce")


@dataclass
class SiteWriter:
    """Per-site file naming state (running file counter for the flat layout) and totals."""

    site_dir: Path
    profile: SiteProfile
    counter: int = 0
    files: int = 0
    bytes: int = 0
    last_paths: list[Path] = field(default_factory=list)  # files of the last series written, slice order

    def path(self, study: StudyInfo, spec: SeriesSpec, series_number: int, instance: int) -> Path:
        layout = self.profile.layout
        if layout == "tree":
            return (
                self.site_dir
                / "export"
                / study.patient_id
                / study.accession[-6:]
                / str(series_number)
                / f"IM{instance:04d}.dcm"
            )
        if layout == "flat":
            self.counter += 1
            return self.site_dir / "DICOM" / f"I{self.counter:07d}"
        folder = (
            re.sub(r"[^A-Za-z0-9]+", "_", spec.description).strip("_")
            if spec.description
            else f"S{series_number}"
        )
        uid_tail = make_uid(*study.uid_root, spec.kind, "file", instance).split(".")[-1][:16]
        return (
            self.site_dir
            / f"{study.patient_id}_{study.study_date}"
            / f"{series_number:03d}_{folder}"
            / f"{uid_tail}.dcm"
        )

    def save(self, ds, path: Path) -> None:
        self.bytes += save(ds, path)
        self.files += 1


def _series_description(
    profile: SiteProfile, kind: str, fat_sat: bool, rng: np.random.Generator
) -> str | None:
    text = description(profile, kind, fat_sat)
    if profile.empty_description_p and rng.random() < profile.empty_description_p:
        return None if rng.random() < 0.5 else ""
    return text


def write_series(
    writer: SiteWriter,
    study: StudyInfo,
    kind: str,
    geom: SeriesGeometry,
    stored: np.ndarray,
    slope: float | None,
    fat_sat: bool,
    rng: np.random.Generator,
) -> tuple[str, list[str]]:
    """Write a (Z, H, W) uint16 series; returns (SeriesInstanceUID, SOPInstanceUIDs in slice order)."""
    profile = writer.profile
    spec = SeriesSpec(
        kind=kind,
        series_uid=make_uid(*study.uid_root, kind, "series"),
        fat_sat=fat_sat,
        description=_series_description(profile, kind, fat_sat, rng),
    )
    z = stored.shape[0]
    sops, paths = [], []
    ds = None
    for k in range(z):
        number = z - k if profile.instance_reversed else k + 1
        if ds is None:
            ds = mr_image(profile, study, spec, geom, k, stored[k], slope, rng, number)
        else:
            set_slice(ds, profile, study, spec, geom, k, stored[k], number)
        sops.append(ds.SOPInstanceUID)
        paths.append(writer.path(study, spec, ds.SeriesNumber, number))
        writer.save(ds, paths[-1])
    writer.last_paths = paths
    return spec.series_uid, sops


def write_localiser(
    writer: SiteWriter, study: StudyInfo, ph: PatientPhantom, rng: np.random.Generator
) -> str:
    profile = writer.profile
    spec = SeriesSpec(
        kind="loc",
        series_uid=make_uid(*study.uid_root, "loc", "series"),
        fat_sat=False,
        description=_series_description(profile, "loc", False, rng),
    )
    ds = None
    for k, (geom, image) in enumerate(localiser_images(ph, profile, rng)):
        if ds is None:
            ds = mr_image(profile, study, spec, geom, 0, image, None, rng, k + 1)
        else:
            set_slice(ds, profile, study, spec, geom, 0, image, k + 1, sop_key=k)
        writer.save(ds, writer.path(study, spec, ds.SeriesNumber, k + 1))
    return spec.series_uid


def write_study(
    writer: SiteWriter,
    study: StudyInfo,
    ph: PatientPhantom,
    rng: np.random.Generator,
    contoured: bool,
) -> dict[str, np.ndarray]:
    """Write every series of one study; returns the truth arrays for ``_truth/<site>/<patient_id>.npz``."""
    profile = writer.profile
    slope = ph.rescale_slope if profile.rescale_slope else None
    truth: dict[str, np.ndarray] = {"label": np.array(ph.label), "patient_id": np.array(study.patient_id)}
    write_localiser(writer, study, ph, rng)
    sops: dict[str, list[str]] = {}
    files: dict[str, list[Path]] = {}
    order = ("t1", "t2", "dwi", "t1ce")
    for kind in order:
        if kind == "dwi":
            if profile.dwi:
                geom, image = dwi_image(ph, profile, rng)
                write_series(writer, study, "dwi", geom, image, None, True, rng)
            continue
        if kind not in ph.stored:
            continue
        fat_sat = {"t1": False, "t2": profile.t2_fat_sat, "t1ce": profile.t1ce_fat_sat}[kind]
        uid, sops[kind] = write_series(writer, study, kind, ph.geometry, ph.stored[kind], slope, fat_sat, rng)
        files[kind] = writer.last_paths
        g = ph.geometry
        truth[f"{kind}_series_uid"] = np.array(uid)
        truth[f"{kind}_image"] = ph.images[kind]
        truth[f"{kind}_iop"] = np.array(g.iop, dtype=np.float64)
        truth[f"{kind}_ipp0"] = np.array(g.ipp(0), dtype=np.float64)
        truth[f"{kind}_spacing"] = np.array([g.slice_spacing, *g.pixel_spacing], dtype=np.float64)
        truth[f"{kind}_affine"] = g.affine()
    truth["sequences"] = np.array([s for s in MR_SEQUENCES if s in ph.stored])
    truth["truth_mask"] = ph.mask
    if contoured:
        seq = profile.contour_sequence if profile.contour_sequence in sops else next(iter(sops))
        rois = [(profile.roi_name, ph.mask)]
        if profile.node_roi and ph.node_mask.any() and profile.mask_format == "rtstruct":
            rois.append(("GTVnd", ph.node_mask))
        if profile.mask_format == "seg":
            ds = segmentation(profile, study, files[seq], ph.mask, profile.roi_name)
            spec = SeriesSpec(kind="seg", series_uid=ds.SeriesInstanceUID, fat_sat=False, description="SEG")
            writer.save(ds, writer.path(study, spec, 901, 1))
        else:
            ds = rtstruct(
                profile,
                study,
                ph.geometry,
                truth[f"{seq}_series_uid"].item(),
                sops[seq],
                rois,
                acquisition_time(study, "t1ce", 59),
            )
            spec = SeriesSpec(
                kind="rtstruct", series_uid=ds.SeriesInstanceUID, fat_sat=False, description="RT contours"
            )
            writer.save(ds, writer.path(study, spec, 900, 1))
        truth["mask"] = ph.mask
        truth["mask_sequence"] = np.array(seq)
        truth["mask_series_uid"] = truth[f"{seq}_series_uid"]
        truth["mask_roi_name"] = np.array(profile.roi_name)
        if len(rois) > 1:
            truth["node_mask"] = ph.node_mask
    return truth
