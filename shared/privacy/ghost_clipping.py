"""Per-sample clipping without per-sample gradients kept: two backward passes (Opacus' "ghost" mode, our driver).

Opacus' hooks mode materialises every parameter's per-sample gradient at once (ResNet18, batch 16: 180 M floats)
and clips them after the backward pass; on a CPU that memory traffic, not arithmetic, dominates (5-7x a non-DP
step at 32 px). Here, as in fast gradient clipping (Lee & Kifer 2021; Bu et al. 2022, "ghost clipping"):

1. a backward pass to the input only (no weight gradients) in which Opacus' hooks compute each sample's
   gradient NORM layer by layer and drop it: a Conv2d's per-sample norm comes from :func:`conv2d_norm_sample`,
   which never forms the per-sample gradient when the feature map is small (the ghost norm);
2. clip factors ``min(1, C / ||g_i||)`` from the per-sample norms over all layers;
3. a plain backward pass of the clip-weighted loss ``sum_i c_i l_i``: ``p.grad = sum_i c_i g_i``, the same
   clipped sum as hooks mode; Opacus' DPOptimizerFastGradientClipping then adds the same noise and scaling.

The loss must be a mean of per-sample losses (what hooks mode also needs); the weights reach the per-sample
losses through the gradient of the loss with respect to the model output, so any such loss works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms ``(B,)`` of a Conv2d's weight (and bias) from its input and output gradient.

    ``activations[0]``: the layer input ``(B, I, H, W)``; ``backprops``: the gradient of the per-sample losses
    with respect to its output ``(B, O, H', W')``. With ``A_i`` the unfolded input ``(D, P)`` (``D = I k^2``,
    ``P = H' W'``) and ``G_i`` the output gradient ``(O, P)``, sample i's weight gradient is ``G_i A_i^T``;
    its squared norm is ``<A_i^T A_i, G_i^T G_i>`` (two ``P x P`` Gram matrices), cheaper than the ``O x D``
    gradient when ``P (D + O) < D O`` (deep, small feature maps); otherwise the gradient is formed one layer at a
    time and only its norm kept.
    """
    from opacus.grad_sample.conv import compute_conv_grad_sample

    if layer.groups != 1:  # grouped convolutions: Opacus' per-sample gradient, then its norm
        grads = compute_conv_grad_sample(layer, activations, backprops)
        return {p: g.flatten(1).norm(2, dim=1) for p, g in grads.items()}
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    g = backprops.reshape(n, backprops.shape[1], -1)  # (B, O, P)
    norms: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        pointwise = layer.kernel_size == (1, 1) and layer.padding == (0, 0) and layer.dilation == (1, 1)
        if pointwise:  # a 1x1 convolution's unfolded input is its (strided) input
            a = x[:, :, :: layer.stride[0], :: layer.stride[1]].reshape(n, x.shape[1], -1)
        else:
            a = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (B, D, P)
        p, d, o = g.shape[2], a.shape[1], g.shape[1]
        if p * (d + o) < d * o:
            gram = torch.bmm(a.transpose(1, 2), a) * torch.bmm(g.transpose(1, 2), g)
            norms[layer.weight] = gram.sum((1, 2)).clamp_min(0).sqrt()
        else:
            norms[layer.weight] = torch.bmm(g, a.transpose(1, 2)).flatten(1).norm(2, dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = g.sum(2).norm(2, dim=1)
    return norms


def register_conv_norm_sampler() -> None:
    """Make Opacus' ghost mode use :func:`conv2d_norm_sample` for Conv2d (its own falls back to full gradients)."""
    from opacus.grad_sample.utils import register_norm_sampler

    register_norm_sampler(nn.Conv2d)(conv2d_norm_sample)


def clipped_backward(gsm: nn.Module, x: torch.Tensor, loss_of_output) -> torch.Tensor:
    """Passes 1-3 above on the Opacus ``GradSampleModuleFastGradientClipping`` ``gsm``; returns the loss.

    ``x``: the batch ``(B, ...)``; ``loss_of_output(output)``: the mean over the batch of per-sample losses.
    Afterwards ``p.grad`` holds ``sum_i c_i g_i`` for every trainable parameter.
    """
    x = x.detach().requires_grad_(True)  # pass 1 asks for d loss / d x only: no weight gradient is computed
    out = gsm(x)
    loss = loss_of_output(out)
    (d_out,) = torch.autograd.grad(loss, out, retain_graph=True)  # row i: (1/B) d l_i / d out_i
    torch.autograd.grad(out, x, d_out, retain_graph=True)  # the hooks store each layer's per-sample norms
    clip = gsm.get_clipping_coef().to(d_out.dtype)
    weight = (clip * x.shape[0]).view(-1, *[1] * (d_out.dim() - 1))
    gsm.disable_hooks()
    try:
        out.backward(d_out * weight)  # d/dtheta sum_i c_i l_i
    finally:
        gsm.enable_hooks()
    return loss.detach()
