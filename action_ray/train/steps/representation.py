"""The FT representation head, computed without its full-resolution cost where that is exact.

Two exact ways, picked by `fast_representation`:

* 2-D: `separable_representation` moves the head's 3x3 convolution below the bilinear
  up-sampling of each coarse decoder level (see its docstring): the same values, a fraction of
  the multiply-adds, and plain autograd for the backward.
* 3-D: `sparse_grad_representation`, a custom backward that only visits the query pixels:

Why: the head's 3x3 convolution over all decoder features (496 channels at 256² for the paper
network) is the most expensive layer of the FT step, and its *backward* costs twice its
forward. But the anatomical contrast sends gradient into the representations only at its
query pixels (prototypes, negatives and bank keys are constants, method.md §4.4): at most
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

import functools
import itertools
from typing import Sequence

import torch
import torch.nn.functional as F

from action_ray.model import RepresentationHead


def fast_representation(
    head: RepresentationHead, features: Sequence[torch.Tensor], size: Sequence[int], max_pixels: int
) -> torch.Tensor:
    """``head(features, size)`` by the cheapest exact path for the input's dimensionality.

    features: [(B, c_i, *S_i)] -> (B, D, *size). ``max_pixels`` bounds the pixels that receive
    gradient (only used by the 3-D path; see `sparse_grad_representation`).
    """
    if len(size) == 2:
        return separable_representation(head, features, size, max_pixels)
    return sparse_grad_representation(head, features, size, max_pixels)


@functools.lru_cache(maxsize=64)
def shifted_interpolation_matrices(size_in: int, size_out: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(3, size_out, size_in): 1-D align_corners=True linear interpolation, shifted by -1, 0, +1.

    Row ``y`` of matrix ``t`` interpolates output position ``y + t - 1`` of the up-sampled axis
    and is all zero where that position lies outside the axis: exactly the rows a 3-tap
    convolution with zero padding reads from an up-sampled signal. Cached: every step asks for
    the same few (sizes, dtype, device), and building them means a host-to-device copy.
    """
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    source = torch.arange(size_out, dtype=torch.float64) * scale
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    base = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    base.index_put_((rows, low), 1.0 - frac, accumulate=True)
    base.index_put_((rows, high), frac, accumulate=True)
    padded = torch.cat([torch.zeros(1, size_in, dtype=torch.float64), base, torch.zeros(1, size_in, dtype=torch.float64)])
    return torch.stack([padded[t : t + size_out] for t in range(3)]).to(dtype=dtype, device=device)


def takes_separable_path(shape: Sequence[int], size: Sequence[int], dim: int) -> bool:
    """Whether `separable_representation` convolves a (B, c, h, w) level below its up-sampling.

    It does when that costs fewer multiply-adds than up-sampling then convolving directly:
    B·(h·w·c·9D + 3D·h·W·3w + D·H·W·3h) against B·c·H·W·9D. Full-resolution levels never do.
    """
    batch, channels, h, w = (int(v) for v in shape)
    height, width = (int(v) for v in size)
    if (h, w) == (height, width):
        return False
    separable = batch * (h * w * channels * 9 * dim + 3 * dim * h * width * 3 * w + dim * height * width * 3 * h)
    return separable < batch * channels * height * width * 9 * dim


def separable_representation(
    head: RepresentationHead, features: Sequence[torch.Tensor], size: Sequence[int], max_pixels: int | None = None
) -> torch.Tensor:
    """``head(features, size)`` for 2-D features, with the 3x3 convolution applied at low resolution.

    Why it is exact: the head is linear (conv3x3 without bias, then conv1x1), and so is the
    bilinear up-sampling U = U_y ⊗ U_x of a coarse level f. Output pixel (y, x) of the 3x3
    convolution reads the up-sampled map at (y + s - 1, x + t - 1) through the tap weight
    W_st, and channel mixing commutes with spatial interpolation, so
    conv3x3(U f) = Σ_st U_y,s (U_x,t (W_st f)), with U_·,s the interpolation matrices whose rows
    are shifted by the tap offset and zeroed outside the axis (the convolution's zero padding;
    `shifted_interpolation_matrices`). W_st f costs per *coarse* pixel, and the two separable
    interpolations cost O(3·D·side) per output pixel instead of 9·c·D. A level is taken this way
    only where that is cheaper (the coarse, wide levels); the full-resolution ones and the
    narrow ones keep the direct convolution. The 1x1 convolution is folded into the 3x3 weights
    first (both are linear), as in `sparse_grad_representation`. Values equal the head's up to
    float rounding, and the backward is plain autograd through the same linear maps, except
    that with ``max_pixels`` the directly convolved levels take the sparse backward of
    `sparse_grad_representation` (exact when at most that many pixels receive gradient).

    features: [(B, c_i, h_i, w_i)] -> (B, D, *size).
    """
    height, width = (int(s) for s in size)
    out_ch, hidden_ch = head.conv2.weight.shape[:2]
    merged = (head.conv2.weight.reshape(out_ch, hidden_ch) @ head.conv1.weight.reshape(hidden_ch, -1)).reshape(
        out_ch, *head.conv1.weight.shape[1:]
    )  # (D, sum c_i, 3, 3)
    total, start = None, 0
    direct_inputs, direct_weights, direct_channels = [], [], []
    for f in features:
        channels, h, w = f.shape[1:]
        weight = merged[:, start : start + channels].to(f.dtype)
        start += channels
        if not takes_separable_path(f.shape, (height, width), out_ch):
            up = f if (h, w) == (height, width) else F.interpolate(f, size=(height, width), mode=head.mode, align_corners=True)
            direct_inputs.append(up)
            direct_weights.append(weight)
            direct_channels.append((start - channels, start))
            continue
        taps = torch.einsum("dcst,bcij->bstdij", weight, f)  # (B, 3, 3, D, h, w): W_st f
        along_x = torch.einsum("txj,bstdij->bsdix", shifted_interpolation_matrices(w, width, f.dtype, str(f.device)), taps)
        level = torch.einsum("syi,bsdix->bdyx", shifted_interpolation_matrices(h, height, f.dtype, str(f.device)), along_x)
        total = level if total is None else total + level
    if direct_inputs:
        inputs = torch.cat(direct_inputs, dim=1)
        if max_pixels is None:
            direct = F.conv2d(inputs, torch.cat(direct_weights, dim=1), padding=1)
        else:  # the same convolution; its backward visits only the pixels that receive gradient
            conv1 = torch.cat([head.conv1.weight[:, a:b] for a, b in direct_channels], dim=1)
            direct = _SparseGradHead.apply(inputs, conv1, head.conv2.weight, None, max_pixels)
        total = direct if total is None else total + direct
    return total + head.conv2.bias.to(total.dtype).reshape(1, -1, 1, 1)


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
