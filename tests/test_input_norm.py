"""``cls-input-norm = "batch"``: the classifier's crops pass a BatchNorm over their channels before the stem."""

from __future__ import annotations

import pytest
import torch

from shared.config import PipelineConfig
from shared.errors import ConfigError, ModelMismatchError
from shared.models import build_classifier
from shared.records import is_running_statistic

torch.set_num_threads(1)

ON = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-input-norm": "batch"}).cls
OFF = PipelineConfig.defaults({"cls-arch": "resnet18", "cls-input-norm": "none"}).cls


def _crops(n: int = 8) -> torch.Tensor:
    """Two-channel tumour crops, 0 outside an 8 x 8 tumour, T1WI-like (narrow) and T2WI-like (wide) channels."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 2, 32, 32)
    x[:, 0, 12:20, 12:20] = 0.08 + 0.19 * torch.randn(n, 8, 8, generator=g)
    x[:, 1, 12:20, 12:20] = 1.08 + 0.50 * torch.randn(n, 8, 8, generator=g)
    return x


def test_each_channel_is_standardised_so_its_scale_no_longer_matters() -> None:
    """In training (batch statistics) the logits do not change (up to BatchNorm's eps) when one sequence's crops are
    3x wider and shifted: the model reads each channel relative to the batch. Without the key they do (the control)."""
    x = _crops()
    rescaled = x.clone()
    rescaled[:, 0] = rescaled[:, 0] * 3.0 + 0.5
    for cfg, invariant in ((ON, True), (OFF, False)):
        torch.manual_seed(0)
        model = build_classifier(cfg, 2).train()
        with torch.no_grad():
            model.fc.bias.zero_()
            torch.nn.init.normal_(model.fc.weight)  # a head that reads the features (zero-init would hide them)
            for m in model.modules():  # zero_init_residual leaves the blocks identity; give them a response
                if isinstance(m, torch.nn.BatchNorm2d) and m is not getattr(model, "input_norm", None):
                    m.weight.fill_(1.0)
            a, b = model(x), model(rescaled)
        change = float((a - b).abs().max() / a.abs().max())
        assert (change < 0.03) if invariant else (change > 0.3), (cfg.input_norm, change)


def test_the_running_statistics_are_learnt_from_training_crops_and_used_in_evaluation() -> None:
    torch.manual_seed(0)
    model = build_classifier(ON, 2).train()
    x = _crops(64)
    with torch.no_grad():
        for _ in range(200):
            model(x)
    norm = model.input_norm
    assert torch.allclose(norm.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-3)
    assert torch.allclose(norm.running_var, x.var(dim=(0, 2, 3)), rtol=0.02)
    assert norm.running_var[1] > 5 * norm.running_var[0]  # the wide channel is the one scaled down
    keys = set(model.state_dict())
    plain = set(build_classifier(OFF, 2).state_dict())
    assert keys - plain == {f"input_norm.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                         "num_batches_tracked")}  # fmt: skip
    # the federated strategies average these as running statistics, not as weights stepped with momentum
    assert is_running_statistic("input_norm.running_mean") and is_running_statistic("input_norm.running_var")


def test_pretraining_and_the_crop_means_head_pass_through_it() -> None:
    from shared.training.pretrain import backbone_features

    torch.manual_seed(0)
    both = PipelineConfig.defaults(
        {"cls-arch": "resnet18", "cls-input-norm": "batch", "cls-crop-means": True}
    ).cls
    model = build_classifier(both, 2).eval()
    x = _crops(3)
    assert model(x).shape == (3, 1)
    assert backbone_features(model, x).shape == (3, model.fc.in_features - 2)
    assert hasattr(model, "input_norm")


def test_differential_privacy_refuses_it_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="cls-input-norm"):
        PipelineConfig.defaults({"cls-input-norm": "batch", "dp": "central"})
    with pytest.raises(ModelMismatchError, match="cls-input-norm"):
        build_classifier(ON, 2, dp=True)
    with pytest.raises(ConfigError, match="cls-input-norm"):
        PipelineConfig.defaults({"cls-input-norm": "instance"})


@pytest.mark.parametrize("dp", ["off", "local", "central"])
def test_auto_is_batch_for_the_plain_classifier_and_none_for_the_dp_one(dp: str) -> None:
    """``auto`` builds the input BatchNorm exactly when the classifier is the plain one; under any DP mode the
    configuration is accepted (no refusal) and the DP-compatible model has no ``input_norm``."""
    changes = {"cls-arch": "resnet18", "cls-input-norm": "auto", "dp": dp, "amp": False, "cls-pretrain-epochs": 0}
    cfg = PipelineConfig.defaults(changes)
    model = build_classifier(cfg.cls, 2, dp=cfg.dp_models)
    has_norm = any(k.startswith("input_norm.") for k in model.state_dict())
    assert has_norm == (dp == "off")
    assert cfg.cls.input_norm_for(cfg.dp_models) == ("batch" if dp == "off" else "none")
    assert OFF.input_norm_for(False) == "none" and ON.input_norm_for(False) == "batch"
