"""Stage 2 model: a torchvision ResNet on tumour ROI crops, one logit (NPL vs NPC)."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision import models as tvm

from shared.config import ClassifierConfig
from shared.errors import ModelMismatchError
from shared.models.crop_features import crop_means
from shared.models.ensemble import ClassifierEnsemble, build_ensemble, members_of
from shared.models.linear_member import CoreLevelLogistic, member_weights
from shared.models.weights import load_pretrained_state

log = logging.getLogger(__name__)

_BUILDERS = {"resnet18": tvm.resnet18, "resnet50": tvm.resnet50, "resnet101": tvm.resnet101}


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB conv weight ``(O, 3, k, k)`` -> ``(O, in_channels, k, k)``: the channel mean repeated, scaled 3/C.

    Keeps the response to a uniform input the same as the pretrained stem's.
    """
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


class RoiResNet(tvm.ResNet):
    """A torchvision ResNet for ROI crops with the optional parts the ``cls-`` keys add; the class is swapped onto a
    built ResNet, so its state-dict keys are a ResNet's plus, with ``cls-input-norm = "batch"``, ``input_norm.*``:
    a BatchNorm over the input channels before the stem (each sequence standardised by the training crops' running
    mean and spread: under ``roi-intensity = "reference"`` T1WI's ratios spread about a third as far as T2WI's).
    With ``fc`` an ``nn.Identity`` (contrastive pretraining reads the backbone's features) it returns the pooled
    features alone."""

    reads_crop_means = False

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        means = crop_means(x) if self.reads_crop_means else None  # of the crops as cut: 0 outside the tumour
        norm = getattr(self, "input_norm", None)
        if norm is not None:
            x = norm(x)
        f = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f = self.layer4(self.layer3(self.layer2(self.layer1(f))))
        f = torch.flatten(self.avgpool(f), 1)
        if isinstance(self.fc, nn.Identity):
            return f
        if means is not None:
            f = torch.cat([f, means.to(f.dtype)], dim=1)
        return self.fc(f)


class ResNetWithCropMeans(RoiResNet):
    """A :class:`RoiResNet` whose head ``fc`` reads the pooled features and :func:`crop_means` of the input
    (``cls-crop-means = true``): only ``fc.weight`` is wider than a ResNet's."""

    reads_crop_means = True


def build_classifier(cfg: ClassifierConfig, in_channels: int, dp: bool = False) -> nn.Module:
    """The classifier of ``cfg``: one ResNet (:func:`build_resnet`), or with ``cls-ensemble = k`` > 1 a
    :class:`~shared.models.ensemble.ClassifierEnsemble` of k of them (same input and output); with
    ``cls-linear-member`` the ensemble's last member is a :class:`~shared.models.linear_member.CoreLevelLogistic`
    weighing half the score (built without a random draw, so the ResNets are the ones the same seed builds
    without it)."""
    model = build_ensemble(lambda: build_resnet(cfg, in_channels, dp), cfg.ensemble)
    if not cfg.linear_member:
        return model
    resnets = members_of(model)
    return ClassifierEnsemble([*resnets, CoreLevelLogistic(in_channels)], member_weights(len(resnets)))


def build_resnet(cfg: ClassifierConfig, in_channels: int, dp: bool = False) -> nn.Module:
    """ResNet (``cfg.arch``) with a ``in_channels`` stem and a single-logit head.

    Input ``(B, in_channels, S, S)`` float32 ROI crops (:mod:`shared.roi.datasets`); output ``(B, 1)`` float32 logits of NPL.
    Weights (``cfg.weights``): random with zero-init of the last BN of each residual block (trains from scratch
    far more reliably here), ImageNet (torchvision enum) or a local state-dict file; for pretrained weights the
    RGB stem is averaged into ``in_channels`` and the 1000-class head replaced. ``cfg.crop_means``: the head
    also reads the crop's mean per channel (:class:`ResNetWithCropMeans`); ``cfg.input_norm`` ``"batch"``, or
    ``"auto"`` without ``dp``: the crops pass a BatchNorm over their channels before the stem (:class:`RoiResNet`).
    """
    if in_channels < 1:
        raise ModelMismatchError(f"in_channels={in_channels}: expected at least 1")
    state = load_pretrained_state(cfg)
    model = _BUILDERS[cfg.arch](weights=None, zero_init_residual=state is None)
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelMismatchError(
                f"cls-weights={cfg.weights!r} does not fit {cfg.arch}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                "expected a torchvision ImageNet state dict of the same architecture"
            )
    old = model.conv1
    model.conv1 = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
    )
    if state is not None:
        with torch.no_grad():
            model.conv1.weight.copy_(adapt_stem(old.weight, in_channels))
    if cfg.crop_means:
        model.__class__ = ResNetWithCropMeans
        model.fc = nn.Linear(model.fc.in_features + in_channels, 1)
    else:
        model.fc = nn.Linear(model.fc.in_features, 1)
    if cfg.input_norm_for(dp) == "batch":
        if dp:
            raise ModelMismatchError(
                "cls-input-norm='batch' has no DP-compatible form (GroupNorm would normalise each crop by its own "
                "level); set cls-input-norm='auto' (none under DP) or 'none' with differential privacy"
            )
        if not cfg.crop_means:
            model.__class__ = RoiResNet
        model.input_norm = nn.BatchNorm2d(in_channels)
    if dp:
        from shared.models.dp_compat import make_dp_compatible

        model = make_dp_compatible(model)
    return model
