"""``cls-crop-means``: the classifier's head reads each channel's mean over the crop's nonzero pixels (the tumour
under ``roi-context = "tumour"``) beside the pooled features."""

from __future__ import annotations

import pytest
import torch

from shared.config import PipelineConfig
from shared.models import build_classifier
from shared.models.classifier import ResNetWithCropMeans, crop_means
from shared.training.pretrain import backbone_features

torch.set_num_threads(1)

ON = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-crop-means": True}).cls
OFF = PipelineConfig.defaults({"cls-arch": "resnet18"}).cls


def _tumour_crops(n: int = 3) -> torch.Tensor:
    """Crops zero outside a 6 x 6 'tumour', as ``roi-context = "tumour"`` writes them."""
    x = torch.zeros(n, 2, 32, 32)
    x[:, :, 12:18, 12:18] = torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(0)) + 2.0
    return x


def test_crop_means_average_the_nonzero_pixels_of_each_channel() -> None:
    x = _tumour_crops()
    expected = x[:, :, 12:18, 12:18].mean(dim=(2, 3))
    assert torch.allclose(crop_means(x), expected, atol=1e-6)
    assert torch.equal(crop_means(torch.zeros(1, 2, 8, 8)), torch.zeros(1, 2))  # no tumour pixel: 0, not NaN


def test_the_head_reads_the_crop_means_beside_the_pooled_features() -> None:
    """With every weight of the head on the pooled features zeroed, the logit is exactly w . means + b: the means
    reach the head. Without the key the head is the plain ResNet's, one column per pooled feature."""
    torch.manual_seed(0)
    model = build_classifier(ON, 2).eval()
    plain = build_classifier(OFF, 2)
    assert isinstance(model, ResNetWithCropMeans)
    d = plain.fc.in_features
    assert model.fc.weight.shape == (1, d + 2) and plain.fc.weight.shape == (1, d)
    assert set(model.state_dict()) == set(plain.state_dict())  # a ResNet's keys: only fc.weight is wider
    with torch.no_grad():
        model.fc.weight[:, :d] = 0.0
        model.fc.weight[:, d:] = torch.tensor([[0.5, -2.0]])
        model.fc.bias.fill_(0.25)
    x = _tumour_crops()
    with torch.no_grad():
        logits = model(x)
    means = crop_means(x)
    assert torch.allclose(logits[:, 0], 0.5 * means[:, 0] - 2.0 * means[:, 1] + 0.25, atol=1e-5)


def test_pretraining_reads_the_backbone_features_alone_and_the_dp_variant_keeps_the_head() -> None:
    torch.manual_seed(0)
    model = build_classifier(ON, 2)
    x = _tumour_crops()
    assert backbone_features(model, x).shape == (3, model.fc.in_features - 2)
    assert isinstance(model.fc, torch.nn.Linear)  # restored after pretraining's read
    dp = build_classifier(ON, 2, dp=True)
    assert isinstance(dp, ResNetWithCropMeans) and dp(x).shape == (3, 1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in dp.modules())


def test_a_wrong_value_is_refused_naming_the_key() -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="cls-crop-means"):
        PipelineConfig.defaults({"cls-crop-means": "sometimes"})
