"""Make a model usable by Opacus DP-SGD: BatchNorm -> GroupNorm, no in-place ops in residual paths.

torchvision ResNets fail in Opacus' hooks at ``out += identity`` ("Output 0 of BackwardHookFunction is a view
and is being modified inplace") even after ``ModuleValidator.fix``: the residual add is rewritten out-of-place
and every ReLU made non-inplace.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from shared.errors import ModelMismatchError


class DPBasicBlock(BasicBlock):
    """BasicBlock with an out-of-place residual add (class swapped in place; picklable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DPBottleneck(Bottleneck):
    """Bottleneck with an out-of-place residual add (class swapped in place; picklable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Return an Opacus-valid copy of ``model`` (same input/output shapes; normalisation layers re-initialised).

    Raises ModelMismatchError when Opacus still reports problems after the fix.
    """
    from opacus.validators import ModuleValidator  # Opacus is loaded only where DP runs

    fixed = ModuleValidator.fix(model)
    for module in fixed.modules():
        if isinstance(module, nn.ReLU | nn.ReLU6 | nn.LeakyReLU | nn.ELU):
            module.inplace = False
        if type(module) is BasicBlock:
            module.__class__ = DPBasicBlock
        elif type(module) is Bottleneck:
            module.__class__ = DPBottleneck
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ModelMismatchError(f"model is not Opacus-compatible after fixing: {errors[:3]}")
    return fixed
