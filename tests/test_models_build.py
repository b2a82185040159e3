"""Segmenter and classifier shapes, losses, weight origins, the stem adaptation and the DP variant."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torchvision.models import resnet18

from shared.config import PipelineConfig
from shared.errors import ConfigError
from shared.models import build_classifier, build_segmenter, weights_origin
from shared.models.dp_compat import make_dp_compatible
from shared.training.classification import smoothed_bce
from shared.training.segmentation import segmentation_loss

DEFAULTS = PipelineConfig.defaults()

torch.set_num_threads(1)


def test_segmenter_shape_and_loss() -> None:
    cfg = replace(DEFAULTS.seg, encoder="resnet18", in_sequences=("t2", "t1ce", "t1"), image_size=32)
    model = build_segmenter(cfg)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 1, 32, 32)
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:16, 8:16] = 1
    for kind in ("dice", "dice+bce"):
        loss = segmentation_loss(kind)(out, target)
        assert loss.ndim == 0 and 0 < float(loss) < 3
    # a perfect prediction has (near) zero Dice loss
    perfect = (target * 40 - 20).requires_grad_()
    assert float(segmentation_loss("dice")(perfect, target)) < 1e-3


@pytest.mark.parametrize("arch", ["resnet18", "resnet101"])
def test_classifier_single_logit(arch: str) -> None:
    model = build_classifier(replace(DEFAULTS.cls, arch=arch), in_channels=2)
    assert model.conv1.in_channels == 2
    out = model(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 1)
    # zero-init residuals for random weights: the last BN of each block starts at 0
    last_bn = model.layer1[0].bn3 if arch == "resnet101" else model.layer1[0].bn2
    assert float(last_bn.weight.abs().sum()) == 0.0
    loss = smoothed_bce(out.squeeze(1), torch.tensor([0.0, 1.0]), 0.1)
    assert float(loss) > 0


def test_label_smoothing_targets() -> None:
    logits = torch.tensor([0.0])
    # with smoothing 0.1 the target for label 1 is 0.95: the loss minimum is at sigmoid(z) = 0.95
    z = torch.logit(torch.tensor([0.95]))
    assert float(smoothed_bce(z, torch.tensor([1.0]), 0.1)) < float(
        smoothed_bce(z + 2, torch.tensor([1.0]), 0.1)
    )
    assert float(smoothed_bce(logits, torch.tensor([1.0]), 0.0)) == pytest.approx(0.6931, abs=1e-4)


def test_file_weights_average_the_rgb_stem(tmp_path) -> None:
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    cfg = replace(DEFAULTS.cls, arch="resnet18", weights=f"file:{path}")
    model = build_classifier(cfg, in_channels=2)
    expected = ref.conv1.weight.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1) * 1.5
    torch.testing.assert_close(model.conv1.weight, expected)
    torch.testing.assert_close(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert weights_origin(cfg) == "file:r18.pth"
    assert weights_origin(DEFAULTS.cls) == "random (zero-init residuals)"
    assert weights_origin(replace(DEFAULTS.cls, weights="imagenet")).startswith("imagenet:ResNet101_Weights")


def test_missing_weight_file_names_the_option(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cls-weights"):
        build_classifier(replace(DEFAULTS.cls, arch="resnet18", weights=f"file:{tmp_path / 'none.pth'}"), 1)


def test_dp_variant_validates_and_takes_a_dp_sgd_step() -> None:
    model = make_dp_compatible(build_classifier(replace(DEFAULTS.cls, arch="resnet18"), in_channels=2))
    assert ModuleValidator.validate(model, strict=False) == []
    seg = build_segmenter(replace(DEFAULTS.seg, encoder="resnet18", image_size=32), dp=True)
    assert ModuleValidator.validate(seg, strict=False) == []
    assert seg(torch.randn(1, 2, 32, 32)).shape == (1, 1, 32, 32)

    x = torch.randn(8, 2, 32, 32)
    y = torch.tensor([0.0, 1.0] * 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine()
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    before = {n: p.detach().clone() for n, p in dp_model.named_parameters()}
    for xb, yb in dp_loader:
        if len(xb) == 0:
            continue
        loss = smoothed_bce(dp_model(xb).squeeze(1), yb, 0.1)
        dp_opt.zero_grad()
        loss.backward()
        dp_opt.step()
    changed = any(not torch.equal(before[n], p) for n, p in dp_model.named_parameters())
    assert changed
    assert engine.get_epsilon(1e-5) > 0
