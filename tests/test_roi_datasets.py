"""ROI cropping on hand-made masks, channel fusion order, and the report of left-out patients."""

from __future__ import annotations

import numpy as np
import torch

from shared.config import PipelineConfig
from shared.data.patient import PatientVolumes
from shared.roi.crop import largest_components, roi_box, roi_crop, select_slices
from shared.roi.datasets import NO_LABEL, UNLABELLED_SPLIT, build_roi_datasets
from simulations.toy_patients import make_toy_patient

CFG = PipelineConfig.defaults(
    {
        "cls-arch": "resnet18",
        "cls-image-size": 16,
        "cls-slices-per-patient": 2,
        "roi-margin": 2,
        "datasets": "t1,t2,t1ce,t1+t2",
    }
)


def test_largest_component_and_slices() -> None:
    m = np.zeros((4, 20, 20), np.uint8)
    m[1:3, 2:10, 2:10] = 1  # big: 2 x 64
    m[0, 15:17, 15:17] = 1  # small: 4 voxels -> dropped
    m[3, 12:18, 12:18] = 1  # 36 voxels >= 20 % of 128 -> kept (a separate lobe)
    kept = largest_components(m)
    assert kept[0].sum() == 0 and kept[1:3].sum() == 128 and kept[3].sum() == 36
    assert select_slices(kept, 2) == [1, 2]
    assert select_slices(kept, 5) == [1, 2, 3]
    assert largest_components(np.zeros((2, 3, 3))).sum() == 0


def test_roi_box_square_with_margin_and_clipped() -> None:
    m = np.zeros((40, 40), np.uint8)
    m[10:14, 20:30] = 1  # 4 x 10
    y0, y1, x0, x1 = roi_box(m, margin=2)
    assert (x0, x1) == (18, 32) and y1 - y0 == 14  # square side = 10 + 2*2
    assert y0 <= 10 and y1 >= 14
    m2 = np.zeros((40, 40), np.uint8)
    m2[0:3, 37:40] = 1  # corner: box must stay inside
    y0, y1, x0, x1 = roi_box(m2, margin=5)
    assert y0 == 0 and x1 == 40 and y1 - y0 == x1 - x0


def test_roi_crop_resizes_and_keeps_values() -> None:
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = roi_crop([a, -a], (2, 6, 3, 7), size=4)  # 4x4 box, no resize needed
    np.testing.assert_array_equal(out[0], a[2:6, 3:7])
    np.testing.assert_array_equal(out[1], -a[2:6, 3:7])
    assert roi_crop([a], (0, 10, 0, 10), size=5).shape == (1, 5, 5)


def test_fusion_channel_order_and_report() -> None:
    full = make_toy_patient(0, 1, size=32, depth=6)
    # mark each sequence by its scale, then check the fused dataset's channel order follows the name
    no_t1 = make_toy_patient(1, 0, size=32, depth=6, sequences=("t2", "t1ce"))
    empty = make_toy_patient(2, 0, size=32, depth=6)
    unlabelled = make_toy_patient(3, 0, size=32, depth=6)
    unlabelled.label = None
    patients = [full, no_t1, empty, unlabelled]
    masks = {p.pseudonym: p.mask for p in patients}
    masks[empty.pseudonym] = np.zeros_like(empty.mask)
    datasets, report = build_roi_datasets(masks, patients, ("t1", "t2+t1", "t1+t2", "t1ce"), CFG)
    assert report.empty_mask == 1 and report.unlabelled == 1
    assert report.missing_sequence == {"t1": 1, "t2+t1": 1, "t1+t2": 1, "t1ce": 0}
    assert report.included == {"t1": 1, "t2+t1": 1, "t1+t2": 1, "t1ce": 2}
    assert any("empty predicted mask" in line for line in report.lines())
    fused, swapped, t1 = datasets["t1+t2"], datasets["t2+t1"], datasets["t1"]
    assert fused.images.shape == (2, 2, 16, 16)  # 2 slices of 1 patient
    torch.testing.assert_close(fused.images[:, 0], t1.images[:, 0])
    torch.testing.assert_close(fused.images[:, 0], swapped.images[:, 1])
    torch.testing.assert_close(fused.images[:, 1], swapped.images[:, 0])
    assert not torch.allclose(fused.images[:, 0], fused.images[:, 1])
    x, y, i = fused[1]
    assert x.dtype == torch.float32 and float(y) == 1.0 and i == 0
    assert fused.patients == [full.pseudonym] and fused.roi_masks.shape == (2, 16, 16)
    assert fused.roi_masks.sum() > 0


def test_unlabelled_patients_are_kept_for_pretraining_only_when_asked_and_never_in_a_labelled_split() -> None:
    labelled = make_toy_patient(0, 1, size=32, depth=6)
    unlabelled = make_toy_patient(3, 0, size=32, depth=6)
    unlabelled.label = None
    patients = [labelled, unlabelled]
    masks = {p.pseudonym: p.mask for p in patients}
    plain, _ = build_roi_datasets(masks, patients, ("t1+t2",), CFG)
    assert plain["t1+t2"].patients == [labelled.pseudonym]
    datasets, report = build_roi_datasets(masks, patients, ("t1+t2",), CFG, include_unlabelled=True)
    ds = datasets["t1+t2"]
    assert ds.patients == [labelled.pseudonym, unlabelled.pseudonym]
    assert ds.split == (labelled.split, UNLABELLED_SPLIT) and list(ds.labels) == [1, NO_LABEL]
    assert report.unlabelled == 1 and report.included == {"t1+t2": 1}
    assert report.unlabelled_included == {"t1+t2": 1}
    assert any("1 unlabelled (contrastive pretraining only)" in line for line in report.lines())
    assert ds.subset("train", "val", "test").patients == [labelled.pseudonym]
    assert ds.subset(UNLABELLED_SPLIT).patients == [unlabelled.pseudonym]
    assert ds.class_counts() == (0, 1)


def test_subset_by_split() -> None:
    patients = [
        make_toy_patient(i, i % 2, size=32, depth=4, split=s) for i, s in enumerate(["train", "val", "test"])
    ]
    datasets, _ = build_roi_datasets({p.pseudonym: p.mask for p in patients}, patients, ("t2",), CFG)
    ds = datasets["t2"]
    val = ds.subset("val")
    assert val.patients == [patients[1].pseudonym] and val.split == ("val",)
    assert len(val) == 2 and set(val.slice_patient.tolist()) == {0}
    assert len(ds.subset("train", "test").patients) == 2


def test_peritumoral_reference_removes_the_surrounding_level_per_channel() -> None:
    from shared.roi.datasets import peritumoral_reference

    inside = np.zeros((8, 8), bool)
    inside[2:6, 2:6] = True
    crop = np.stack([np.where(inside, 3.0, 1.0), np.where(inside, -1.0, 5.0)]).astype(np.float32)
    out = peritumoral_reference(crop + np.float32(7.0), inside)  # a shift shared by tumour and surroundings
    assert np.allclose(out[0][inside], 2.0) and np.allclose(out[0][~inside], 0.0)
    assert np.allclose(out[1][inside], -6.0) and np.allclose(out[1][~inside], 0.0)
    assert np.array_equal(peritumoral_reference(crop, np.ones((8, 8), bool)), crop)  # no ring: unchanged


def _muscle_fat_patient(scale: float, fat_fraction: float) -> PatientVolumes:
    """Muscle (100) around a tumour 1.2x muscle, a fat block (300) far from it covering ``fat_fraction`` of the
    slice width, air outside: the body-wide statistics move with the fat, the tumour/muscle ratio does not."""
    shape = (6, 64, 64)
    image = np.full(shape, 100.0, np.float32)
    image[:, :, :4] = 1.0  # air
    image[:, :, 64 - int(fat_fraction * 64) :] = 300.0  # fat, more than 40 mm from the tumour
    mask = np.zeros(shape, np.uint8)
    mask[1:5, 8:16, 8:16] = 1
    image[mask > 0] = 120.0
    return PatientVolumes(
        pseudonym=f"ref-{scale}-{fat_fraction}",
        label=1,
        images={"t1": image * np.float32(scale)},
        mask=mask,
        spacing_mm=(4.0, 1.0, 1.0),
        split="train",
    )


def test_reference_intensity_is_the_ratio_to_the_tissue_near_the_tumour() -> None:
    cfg = {"cls-arch": "resnet18", "cls-image-size": 16, "cls-slices-per-patient": 2, "roi-margin": 0,
           "datasets": "t1"}  # fmt: skip
    patients = [
        _muscle_fat_patient(1.0, 0.2),
        _muscle_fat_patient(7.0, 0.45),
    ]  # other scanner scale, more fat
    masks = {p.pseudonym: p.mask for p in patients}
    ref, _ = build_roi_datasets(
        masks, patients, ("t1",), PipelineConfig.defaults({**cfg, "roi-intensity": "reference"})
    )
    # margin 0: the crops are all tumour, 1.2 x muscle at both scanner scales and fat fractions
    np.testing.assert_allclose(ref["t1"].images.numpy(), 0.2, atol=1e-5)
    logs, _ = build_roi_datasets(
        masks, patients, ("t1",), PipelineConfig.defaults({**cfg, "roi-intensity": "log-reference"})
    )
    np.testing.assert_allclose(logs["t1"].images.numpy(), np.log(1.2), atol=1e-5)  # the same ratio, its log
    body, _ = build_roi_datasets(
        masks, patients, ("t1",), PipelineConfig.defaults({**cfg, "roi-intensity": "body"})
    )
    z = body["t1"].images.numpy()
    assert abs(float(z[0].mean() - z[2].mean())) > 0.1  # the body z-score moves with the fat elsewhere


def test_log_reference_is_the_log_ratio_clipped_so_air_cannot_dominate() -> None:
    from shared.roi.reference_tissue import LOG_RATIO_CLIP, log_ratio_to_reference

    volume = np.array([0.0, 1e-3, 50.0, 100.0, 200.0, 1e6], np.float32)
    out = log_ratio_to_reference(volume, float(np.log(100.0)))
    np.testing.assert_allclose(out[2:5], np.log([0.5, 1.0, 2.0]), atol=1e-6)
    assert out[0] == out[1] == np.float32(-LOG_RATIO_CLIP) and out[-1] == np.float32(LOG_RATIO_CLIP)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_reference_tissue_needs_a_tumour_and_tissue_around_it() -> None:
    import pytest

    from shared.errors import ConfigError
    from shared.roi.reference_tissue import reference_log_level

    p = _muscle_fat_patient(1.0, 0.2)
    with pytest.raises(ValueError, match="empty"):
        reference_log_level(p.images["t1"], np.zeros_like(p.mask), p.spacing_mm)
    good = _muscle_fat_patient(2.0, 0.2)
    p.images["t1"] = np.where(p.mask > 0, p.images["t1"], 0.0).astype(np.float32)  # nothing but the tumour
    cfg = PipelineConfig.defaults(
        {"cls-image-size": 16, "cls-slices-per-patient": 2, "datasets": "t1", "roi-intensity": "reference"}
    )
    # one such patient is left out and counted; the others' crops are built (one bad series never stops a site)
    out, report = build_roi_datasets({x.pseudonym: x.mask for x in (p, good)}, [p, good], ("t1",), cfg)
    assert out["t1"].patients == [good.pseudonym] and report.no_reference == {"t1": 1}
    assert "1 left out (no tissue around the tumour" in " ".join(report.lines())
    assert p.pseudonym not in " ".join(report.lines())  # the report holds counts, never a pseudonym
    with pytest.raises(ConfigError, match="body, peritumoral, reference, log-reference"):
        PipelineConfig.defaults({"roi-intensity": "muscle"})


def test_the_site_roi_cache_key_differs_for_every_setting_that_changes_the_crops() -> None:
    from client.roi_cache import roi_key

    base = {"cls-image-size": 16, "datasets": "t1"}
    keys = {
        roi_key("seg-hash", PipelineConfig.defaults({**base, **change}))
        for change in (
            {},
            {"roi-intensity": "peritumoral"},
            {"roi-intensity": "reference"},
            {"roi-intensity": "log-reference"},
            {"roi-intensity": "body"},
            {"roi-margin": 9},
            {"cls-image-size": 24},
            {"roi-context": "box"},
            {"roi-context": "tumour"},
        )
    }
    # the defaults are among those named (intensity reference, context tumour): exactly two pairs are the same
    assert len(keys) == 7


def test_tumour_context_keeps_the_tumour_and_sets_its_surroundings_to_the_reference_level() -> None:
    cfg = {"cls-arch": "resnet18", "cls-image-size": 16, "cls-slices-per-patient": 2, "roi-margin": 4,
           "datasets": "t1", "roi-intensity": "body"}  # fmt: skip
    patients = [_muscle_fat_patient(1.0, 0.2)]
    masks = {p.pseudonym: p.mask for p in patients}
    box, _ = build_roi_datasets(masks, patients, ("t1",), PipelineConfig.defaults({**cfg, "roi-context": "box"}))
    tumour, _ = build_roi_datasets(
        masks, patients, ("t1",), PipelineConfig.defaults({**cfg, "roi-context": "tumour"})
    )
    inside = box["t1"].roi_masks.astype(bool)[:, None]
    b, t = box["t1"].images.numpy(), tumour["t1"].images.numpy()
    assert inside.any() and (~inside).any()
    assert np.abs(b[np.broadcast_to(~inside, b.shape)]).min() > 0.1  # the box shows the muscle around the tumour
    assert np.all(t[np.broadcast_to(~inside, t.shape)] == 0.0)
    np.testing.assert_array_equal(t[np.broadcast_to(inside, t.shape)], b[np.broadcast_to(inside, b.shape)])
    assert PipelineConfig.defaults().roi_context == "tumour"
    import pytest

    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="roi-context.*tumour, box"):  # a coordinator's unknown value is refused
        PipelineConfig.defaults({"roi-context": "ring"})
