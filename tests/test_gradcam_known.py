"""Grad-CAM on a hand-built net whose answer is known, and the core/periphery split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from shared.config import PipelineConfig
from shared.explain.gradcam import core_periphery_share, grad_cam, save_overlay
from shared.models import build_classifier

DEFAULTS = PipelineConfig.defaults()


class BrightSquareNet(nn.Module):
    """Fires only where the input exceeds 1.0: conv(+bias −1) -> ReLU (the "last conv block" output) -> mean -> logit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 9)
            self.conv.bias.fill_(-1.0)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(5.0)
            self.fc.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3)))


def test_cam_peaks_on_the_bright_square() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 0.5, (1, 32, 32)).astype(np.float32)
    img[0, 20:26, 5:11] = 3.0
    model = BrightSquareNet()
    cam = grad_cam(model, torch.from_numpy(img), target_layer=model.relu)
    assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert 20 <= peak[0] < 26 and 5 <= peak[1] < 11
    inside = np.zeros((32, 32), bool)
    inside[19:27, 4:12] = True
    assert cam[~inside].max() < 0.05  # nothing outside the square (plus the conv's 1-pixel reach)
    # negative evidence direction: nothing argues for the other class
    assert grad_cam(model, torch.from_numpy(img), target_layer=model.relu, class_sign=-1.0).max() == 0.0


def test_cam_on_resnet_shape_and_overlay(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_classifier(replace(DEFAULTS.cls, arch="resnet18"), in_channels=2)
    with torch.no_grad():  # zero-init residuals give a flat CAM: perturb so gradients flow
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.1)
    model.train()
    cam = grad_cam(model, torch.randn(2, 32, 32))
    assert model.training  # mode restored
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1
    path = save_overlay(np.zeros((32, 32)), cam, tmp_path / "cam.png", mask=np.eye(32), title="t")
    assert path.stat().st_size > 500


def test_core_periphery_share() -> None:
    mask = np.zeros((21, 21), np.uint8)
    mask[3:18, 3:18] = 1
    yy, xx = np.mgrid[:21, :21]
    centre = np.exp(-((yy - 10) ** 2 + (xx - 10) ** 2) / 8.0)
    core, periphery = core_periphery_share(centre, mask)
    assert core > 0.8 and core + periphery == pytest.approx(1.0)
    ring = 1.0 - centre
    core, periphery = core_periphery_share(ring, mask)
    assert periphery > core
    uniform_core, _ = core_periphery_share(np.ones((21, 21)), mask)
    assert 0.35 < uniform_core < 0.65  # the core holds about half of the mask's pixels
    assert np.isnan(core_periphery_share(centre, np.zeros_like(mask))[0])


def test_cam_comes_from_a_map_large_enough_to_say_where() -> None:
    """ResNet's layer4 is 1x1 on a 32 px crop: its CAM is a constant, whose core share is only the core's share of
    the mask's area (what every dataset reported before, 0.44 each). The layer is chosen by the map's size."""
    from shared.explain.gradcam import cam_layer

    torch.manual_seed(0)
    model = build_classifier(replace(DEFAULTS.cls, arch="resnet18"), in_channels=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.1)
    assert cam_layer(model, (2, 32, 32))[0] == "layer2"
    assert cam_layer(model, (2, 64, 64))[0] == "layer3"
    assert cam_layer(model, (2, 128, 128))[0] == "layer4"
    x = torch.randn(2, 32, 32)
    mask = np.zeros((32, 32), np.uint8)
    mask[6:26, 6:26] = 1
    flat = grad_cam(model, x, target_layer=model.layer4)
    assert flat.max() == 0.0 or np.ptp(flat) < 1e-6  # 1x1 map: no spatial information at all
    if flat.max() > 0:
        area_share, _ = core_periphery_share(np.ones((32, 32)), mask)
        assert core_periphery_share(flat, mask)[0] == pytest.approx(area_share)
    cam = grad_cam(model, x)  # the default layer
    assert np.ptp(cam) > 0.1
