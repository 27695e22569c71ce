"""The FT representation head with a backward pass that only visits the query pixels.

Why: the head's 3x3 convolution over all decoder features (496 channels at 256² for the paper
network) is the most expensive layer of the FT step, and its *backward* costs twice its
forward. But the anatomical contrast sends gradient into the representations only at its
query pixels (prototypes, negatives and bank keys are constants, method.md §6.6): at most
C·M pixels of the N·H·W in the batch. `sparse_grad_representation` therefore computes the
forward exactly as `RepresentationHead` does (same convolutions), keeps only its input, and in
backward recomputes the head on the 3x3 (3x3x3) neighbourhoods of the ≤ ``max_pixels`` pixels
whose incoming gradient is non-zero, chosen with a fixed-size ``topk`` (no host sync, static
shapes). The forward runs the two linear convolutions as one (their weights multiplied), so
its values equal the head's up to float rounding. The gradients equal those of the dense backward up to float rounding, as long as no
more than ``max_pixels`` pixels receive gradient, which holds when the representations feed
only the anatomical contrast with ``max_pixels >= C·M``.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F

from action_ray.model import RepresentationHead


def upsampled_features(head: RepresentationHead, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """The head's input: every feature map resized to ``size`` (align_corners=True), concatenated.

    features: [(B, c_i, *S_i)] -> (B, sum c_i, *size).
    """
    size = tuple(int(s) for s in size)
    ups = [
        f if tuple(f.shape[2:]) == size else F.interpolate(f, size=size, mode=head.mode, align_corners=True)
        for f in features
    ]
    return torch.cat(ups, dim=1)


def _neighbour_offsets(dims: int) -> list[tuple[int, ...]]:
    """Offsets of a 3^dims kernel in the weight's (row-major) tap order."""
    return list(itertools.product((-1, 0, 1), repeat=dims))


class _SparseGradHead(torch.autograd.Function):
    """conv3 (no bias) -> conv1 (bias); backward only at the top-``max_pixels`` gradient pixels."""

    @staticmethod
    def forward(ctx, inputs, weight1, weight2, bias2, max_pixels: int):  # type: ignore[override]
        # The head is linear, so conv1x1(conv3x3(x)) is one 3x3 convolution with the product of
        # the weights: no full-resolution hidden map, and ~10 % fewer multiply-adds.
        conv = F.conv2d if inputs.dim() == 4 else F.conv3d
        out_ch, hidden_ch = weight2.shape[:2]
        merged = (weight2.reshape(out_ch, hidden_ch) @ weight1.reshape(hidden_ch, -1)).reshape(
            out_ch, *weight1.shape[1:]
        )
        out = conv(inputs, merged.to(inputs.dtype), bias2, padding=1)
        ctx.save_for_backward(inputs, weight1, weight2, bias2)
        ctx.max_pixels = int(max_pixels)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        inputs, weight1, weight2, bias2 = ctx.saved_tensors
        batch, in_ch, *spatial = inputs.shape
        out_ch, hidden_ch = weight2.shape[:2]
        pixels = 1
        for s in spatial:
            pixels *= s
        work = torch.float32 if grad_out.dtype in (torch.float16, torch.bfloat16) else grad_out.dtype
        grad_rows = grad_out.movedim(1, -1).reshape(-1, out_ch)  # (N·P, D)
        count = min(ctx.max_pixels, grad_rows.shape[0])
        chosen = torch.topk(grad_rows.abs().sum(dim=1), count, sorted=False).indices  # (k,)
        image, position = chosen // pixels, chosen % pixels
        coords = []
        rest = position
        for s in reversed(spatial):
            coords.append(rest % s)
            rest = rest // s
        coords.reverse()  # per spatial axis, (k,)
        flat_inputs = inputs.reshape(batch, in_ch, pixels)
        taps, tap_rows, tap_valid = [], [], []
        for offset in _neighbour_offsets(len(spatial)):
            valid = torch.ones_like(chosen, dtype=torch.bool)
            linear = torch.zeros_like(chosen)
            for axis, (c, d, s) in enumerate(zip(coords, offset, spatial)):
                shifted = c + d
                valid &= (shifted >= 0) & (shifted < s)
                linear = linear * s + shifted.clamp(0, s - 1)
            values = flat_inputs[image, :, linear] * valid.unsqueeze(1)  # (k, in_ch), zero padding
            taps.append(values)
            tap_rows.append(image * pixels + linear)
            tap_valid.append(valid)
        with torch.enable_grad():
            patches = torch.stack(taps, dim=-1).to(work).requires_grad_(True)  # (k, in_ch, taps)
            w1 = weight1.detach().to(work).requires_grad_(True)
            w2 = weight2.detach().to(work).requires_grad_(True)
            b2 = bias2.detach().to(work).requires_grad_(True) if bias2 is not None else None
            hidden = patches.reshape(count, -1) @ w1.reshape(hidden_ch, -1).T  # (k, hidden)
            rep = hidden @ w2.reshape(out_ch, hidden_ch).T
            if b2 is not None:
                rep = rep + b2
            wanted = [patches, w1, w2] + ([b2] if b2 is not None else [])
            grads = torch.autograd.grad(rep, wanted, grad_rows[chosen].to(work))
        grad_patches, grad_w1, grad_w2 = grads[:3]
        grad_b2 = grads[3].to(bias2.dtype) if bias2 is not None else None
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            flat_grad = torch.zeros(batch * pixels, in_ch, dtype=work, device=inputs.device)
            for tap, (rows, valid) in enumerate(zip(tap_rows, tap_valid)):
                flat_grad.index_add_(0, rows, grad_patches[:, :, tap] * valid.unsqueeze(1))
            grad_inputs = flat_grad.reshape(batch, *spatial, in_ch).movedim(-1, 1).to(inputs.dtype)
        return grad_inputs, grad_w1.to(weight1.dtype), grad_w2.to(weight2.dtype), grad_b2, None


def sparse_grad_representation(
    head: RepresentationHead, features: Sequence[torch.Tensor], size: Sequence[int], max_pixels: int
) -> torch.Tensor:
    """``head(features, size)`` whose backward visits only the ``max_pixels`` pixels with the
    largest incoming gradient (see the module docstring for when that is exact).

    features: [(B, c_i, *S_i)] -> (B, D, *size).
    """
    inputs = upsampled_features(head, features, size)
    return _SparseGradHead.apply(inputs, head.conv1.weight, head.conv2.weight, head.conv2.bias, max_pixels)
