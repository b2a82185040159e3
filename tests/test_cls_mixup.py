"""cls-mixup: blended crops with blended labels in the classifier loop; off leaves training unchanged; refused
under DP-SGD."""

from __future__ import annotations

import pytest
import torch

from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.models import build_classifier
from shared.roi.datasets import RoiDataset
from shared.training.augment import mixup_batch
from shared.training.classification import train_classifier

torch.set_num_threads(1)


def _labelled_batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops whose every pixel equals their label (0 or 1): a blend's pixel value is then its blended label."""
    y = torch.tensor([float(i % 3 == 0) for i in range(n)])
    return y.view(-1, 1, 1, 1).expand(n, 2, 8, 8).clone(), y


def test_mixup_blends_crops_and_labels_with_the_same_weights() -> None:
    x, y = _labelled_batch()
    mx, my = mixup_batch(x, y, 0.4, torch.Generator().manual_seed(3))
    assert mx.shape == x.shape and my.shape == y.shape
    # each blended crop is constant and equals its blended label: the same lam and partner for both
    torch.testing.assert_close(mx.amin(dim=(1, 2, 3)), my)
    torch.testing.assert_close(mx.amax(dim=(1, 2, 3)), my)
    assert ((my > 0) & (my < 1)).any(), "no crop was blended across classes"
    assert torch.all((my >= 0) & (my <= 1))


def test_mixup_is_reproducible_by_seed_and_off_at_zero() -> None:
    x, y = _labelled_batch()
    a = mixup_batch(x, y, 1.0, torch.Generator().manual_seed(5))
    b = mixup_batch(x, y, 1.0, torch.Generator().manual_seed(5))
    c = mixup_batch(x, y, 1.0, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[1], c[1])
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    same_x, same_y = mixup_batch(x, y, 0.0, gen)
    assert same_x is x and same_y is y
    assert torch.equal(gen.get_state(), state), "mixup off drew from the augmentation generator"


def _roi_dataset(n: int = 12) -> RoiDataset:
    gen = torch.Generator().manual_seed(0)
    labels = [i % 2 for i in range(n)]
    images = torch.randn((n * 2, 2, 32, 32), generator=gen)
    for k in range(n * 2):
        images[k, :, 10:20, 10:20] += 1.5 * labels[k // 2]
    return RoiDataset("t1+t2", ("t1", "t2"), images.numpy(), torch.arange(n).repeat_interleave(2).numpy(),
                      [f"p{i}" for i in range(n)], labels, ["train"] * n)  # fmt: skip


def _trained(mixup: float) -> dict[str, torch.Tensor]:
    cfg = PipelineConfig.defaults(
        {"cls-arch": "resnet18", "cls-image-size": 32, "cls-batch-size": 8, "device": "cpu", "cls-mixup": mixup}
    )
    torch.manual_seed(0)
    ds = _roi_dataset()
    model = build_classifier(cfg.cls, ds.in_channels)
    stats = train_classifier(model, ds, cfg, torch.device("cpu"), epochs=2)
    assert torch.isfinite(torch.tensor(stats.loss_last))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_mixup_reaches_the_classifier_loop_and_off_trains_as_before() -> None:
    off_a, off_b, mixed = _trained(0.0), _trained(0.0), _trained(0.4)
    assert all(torch.equal(off_a[k], off_b[k]) for k in off_a), "training without mixup is not reproducible"
    assert any(not torch.equal(off_a[k], mixed[k]) for k in off_a), "cls-mixup=0.4 trained the same weights"


def test_mixup_is_refused_under_local_dp_and_out_of_range() -> None:
    with pytest.raises(ConfigError, match=r"dp='local' with cls-mixup=0.4.*set cls-mixup=0"):
        PipelineConfig.defaults({"dp": "local", "amp": False, "cls-mixup": 0.4})
    assert PipelineConfig.defaults({"dp": "central", "cls-mixup": 0.4}).cls.mixup == 0.4
    with pytest.raises(ConfigError, match="cls-mixup"):
        PipelineConfig.defaults({"cls-mixup": -0.1})
