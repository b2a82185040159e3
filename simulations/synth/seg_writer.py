"""DICOM SEG (instead of RTSTRUCT) for sites that export masks as segmentations, written with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from simulations.synth.dicom_series import StudyInfo, make_uid
from simulations.synth.site_profile import SiteProfile


def segmentation(
    profile: SiteProfile, study: StudyInfo, source_paths: list[Path], mask: np.ndarray, roi_name: str
) -> Dataset:
    """BINARY SEG of ``mask`` (uint8 (Z, H, W), slice k = ``source_paths[k]``) with one segment ``roi_name``."""
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_paths]
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=roi_name,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc],
        series_instance_uid=make_uid(*study.uid_root, "seg-series"),
        series_number=901,
        sop_instance_uid=make_uid(*study.uid_root, "seg"),
        instance_number=1,
        manufacturer="nasofl-synth",
        manufacturer_model_name="synthetic contouring",
        software_versions="nasofl-synth 1",
        device_serial_number=f"{profile.index:04d}",
        omit_empty_frames=True,
    )
