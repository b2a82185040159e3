"""Grad-CAM (Selvaraju et al. 2017) for the single-logit classifiers, overlays, and where the evidence lies
inside the tumour (the seed study: the tumour centre weighs more than its periphery)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from shared.models.linear_member import spatial_members

#: the smallest side of the feature map Grad-CAM is taken from: a 1x1 map (ResNet's layer4 on a 32 px crop) is
#: upsampled to a constant, so its "core share" would be the core's share of the mask's area, whatever the model
#: looks at; 2x2 can only say which quadrant
MIN_CAM_SIDE = 4
RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1")


@torch.no_grad()
def stage_sides(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Output side (the smaller of H, W) of each ResNet stage present in ``model`` for one input of ``shape``
    ``(C, H, W)``, from one forward pass on zeros (the model's mode is restored)."""
    sides: dict[str, int] = {}
    handles = []
    for name in RESNET_STAGES:
        stage = getattr(model, name, None)
        if isinstance(stage, nn.Module):
            handles.append(stage.register_forward_hook(
                lambda _m, _i, out, name=name: sides.__setitem__(name, int(min(out.shape[-2:])))
            ))  # fmt: skip
    if not handles:
        return sides
    was_training = model.training
    params = list(model.parameters())
    model.eval()
    try:
        device = params[0].device if params else torch.device("cpu")
        model(torch.zeros((1, *shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sides


def cam_layer(
    model: nn.Module, shape: tuple[int, ...], min_side: int = MIN_CAM_SIDE
) -> tuple[str, nn.Module | tuple[nn.Module, ...]]:
    """``(name, module)`` Grad-CAM is taken from for inputs of ``shape (C, H, W)``.

    torchvision ResNets: the deepest stage whose output is at least ``min_side`` pixels a side (224 px: layer4,
    7x7; 64 px: layer3, 4x4; 32 px: layer2, 4x4), ``layer1`` when none is. Other models: the last ``nn.Conv2d``.
    An ensemble (``cls-ensemble``): that stage of every member, as a tuple of modules (:func:`grad_cam` sums the
    members' maps); with ``cls-linear-member`` the ResNets' alone (the regression member reads no location).
    """
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList):
        spatial = spatial_members(model)  # cls-linear-member: the regression member has no map
        name, _ = cam_layer(spatial[0], shape, min_side)
        return name, tuple(dict(m.named_modules())[name] for m in spatial)
    sides = stage_sides(model, shape)
    if sides:
        for name in RESNET_STAGES:
            if name in sides and sides[name] >= min_side:
                return name, getattr(model, name)
        shallowest = [name for name in RESNET_STAGES if name in sides][-1]
        return shallowest, getattr(model, shallowest)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer: Grad-CAM needs convolutional features")
    return convs[-1]


def grad_cam(
    model: nn.Module,
    image: torch.Tensor,
    target_layer: nn.Module | tuple[nn.Module, ...] | None = None,
    class_sign: float = 1.0,
) -> np.ndarray:
    """Grad-CAM of ``image (C, H, W)`` float32 for the logit times ``class_sign`` (+1: NPL evidence, −1: NPC).

    Returns float32 ``(H, W)`` in [0, 1] (all zeros when no positive evidence). The model is put in eval mode.
    ``target_layer`` defaults to :func:`cam_layer` (a stage whose map is at least ``MIN_CAM_SIDE`` a side). Several
    layers (an ensemble's members): each map is taken with the gradient of the one output logit, the maps are
    summed, then scaled to [0, 1] (a member that moves the ensemble's logit more weighs more).
    """
    layer = target_layer if target_layer is not None else cam_layer(model, tuple(image.shape))[1]
    layers = layer if isinstance(layer, tuple) else (layer,)
    store: dict[tuple[str, int], torch.Tensor] = {}

    def hook_of(i: int):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
            # the activation becomes the graph's only leaf: backward runs through the layers after it and stops
            # there (no gradient for the trunk or any weight: 30x less work for a ResNet101 on CPU)
            leaf = out.detach().requires_grad_(True)
            store["act", i] = leaf
            leaf.register_hook(lambda g: store.__setitem__(("grad", i), g))
            return leaf

        return hook

    handles = [m.register_forward_hook(hook_of(i)) for i, m in enumerate(layers)]
    was_training = model.training
    params = list(model.parameters())
    needs_grad = [p.requires_grad for p in params]
    model.eval()
    try:
        device = params[0].device
        x = image.detach().to(device).float()[None].requires_grad_(False)
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            logit = model(x).reshape(-1)[0] * class_sign
            logit.backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, needs_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    cam = torch.zeros(tuple(image.shape[-2:]), device=device)
    for i in range(len(layers)):
        act, grad = store["act", i].detach(), store["grad", i].detach()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        one = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam += F.interpolate(one, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    out = (cam / peak) if peak > 0 else torch.zeros_like(cam)
    return out.cpu().numpy().astype(np.float32)


def core_periphery_share(
    cam: np.ndarray, mask: np.ndarray, core_fraction: float = 0.5
) -> tuple[float, float]:
    """Share of the CAM mass inside the mask falling in the tumour core vs its periphery.

    The core is the ``core_fraction`` of mask pixels farthest from the mask border (Euclidean distance
    transform, ``scipy.ndimage.distance_transform_edt``); the periphery the rest. With ``core_fraction=0.5`` both
    parts have about the same area, so ``core_share > periphery_share`` means the evidence concentrates in the
    centre. ``cam``, ``mask``: ``(H, W)`` (or any equal shape). Returns ``(nan, nan)`` for an empty mask or a
    CAM with no mass inside the mask.
    """
    if not 0.0 < core_fraction < 1.0:
        raise ValueError(f"core_fraction={core_fraction}: expected a value in (0, 1)")
    m = np.asarray(mask) > 0
    if cam.shape != m.shape:
        raise ValueError(f"cam {cam.shape} and mask {m.shape} differ in shape")
    if not m.any():
        return float("nan"), float("nan")
    dist = ndimage.distance_transform_edt(m)
    inside = dist[m]
    cut = np.quantile(inside, 1.0 - core_fraction)
    core = m & (dist > cut) if (inside > cut).any() else m & (dist >= cut)
    periphery = m & ~core
    c = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    total = c[m].sum()
    if total <= 0:
        return float("nan"), float("nan")
    return float(c[core].sum() / total), float(c[periphery].sum() / total)


def save_overlay(
    image2d: np.ndarray, cam: np.ndarray, path: str | Path, mask: np.ndarray | None = None, title: str = ""
) -> Path:
    """PNG of the slice (grey), the CAM (jet, alpha 0.4) and the mask contour (white); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 3), dpi=100)
    ax.imshow(image2d, cmap="gray")
    ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    if mask is not None and np.any(mask):
        ax.contour(np.asarray(mask).astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
