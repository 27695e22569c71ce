"""The segmentation backbone of ACTION: the SSL4MIS 2-D UNet, and a 3-D UNet with the same shape.

Student and teacher are two instances of the same network. Besides the logits, the forward
returns the bottleneck (input of the global distillation heads) and the decoder-side feature
maps (input of the pixel representation head used by anatomical contrast), so that every stage
of the method can be run from one forward pass.

Layout (method.md §2.1), for widths (w0..w4) = (16, 32, 64, 128, 256):

* ConvBlock(cin, cout, p) = conv3 -> BN -> LeakyReLU(0.01) -> Dropout(p) -> conv3 -> BN -> LeakyReLU
* encoder: e0 = ConvBlock(in, w0) at full size, e_i = MaxPool2 -> ConvBlock(w_{i-1}, w_i)
* decoder: d_j = ConvTranspose(k=2, s=2) of the deeper map, concat [skip, up], ConvBlock(2c -> c)
* output: conv3 (w0 -> num_classes)

The network never calls `view()`, so `channels_last` inputs and weights work unchanged.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

PAPER_WIDTHS = (16, 32, 64, 128, 256)
PAPER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)


class UNetOutput(NamedTuple):
    """What a UNet forward returns.

    logits:     (B, num_classes, *S) pre-softmax segmentation scores at input size S.
    bottleneck: (B, widths[-1], *S/16) deepest encoder map; the global heads' input.
    features:   [e4, d1, d2, d3, d4], deepest first; channels sum to ``sum(widths)``
                (496 for the paper widths); the representation head's input.
    """

    logits: torch.Tensor
    bottleneck: torch.Tensor
    features: list[torch.Tensor]


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(Conv, BatchNorm, MaxPool, ConvTranspose) classes for 2-D or 3-D."""
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d
    if dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d
    raise ValueError(f"dims must be 2 or 3, got {dims!r}")


class ConvBlock(nn.Sequential):
    """conv3 -> BN -> LeakyReLU(0.01) -> Dropout(p) -> conv3 -> BN -> LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, dims: int = 2) -> None:
        conv, norm, _, _ = _layers(dims)
        super().__init__(
            conv(in_channels, out_channels, kernel_size=3, padding=1),
            norm(out_channels),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            conv(out_channels, out_channels, kernel_size=3, padding=1),
            norm(out_channels),
            nn.LeakyReLU(0.01),
        )


class UpBlock(nn.Module):
    """Transposed-conv upsampling of the deeper map, concat with the skip, then a ConvBlock.

    deep: (B, in_channels, *S/2), skip: (B, skip_channels, *S) -> (B, skip_channels, *S)
    """

    def __init__(self, in_channels: int, skip_channels: int, dims: int = 2) -> None:
        super().__init__()
        _, _, _, transpose = _layers(dims)
        self.up = transpose(in_channels, skip_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2 * skip_channels, skip_channels, dropout=0.0, dims=dims)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(deep)], dim=1))


class Encoder(nn.Module):
    """The contracting path; returns every level's map, shallowest first: [e0, ..., e4]."""

    def __init__(self, in_channels: int, widths: Sequence[int], dropout: Sequence[float], dims: int) -> None:
        super().__init__()
        _, _, pool, _ = _layers(dims)
        self.pool = pool(2)
        cins = [in_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(
            ConvBlock(cin, cout, p, dims) for cin, cout, p in zip(cins, widths, dropout)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [self.blocks[0](x)]
        for block in self.blocks[1:]:
            maps.append(block(self.pool(maps[-1])))
        return maps


class Decoder(nn.Module):
    """The expanding path plus the output conv; `freeze_decoder` freezes exactly this module."""

    def __init__(self, widths: Sequence[int], num_classes: int, dims: int) -> None:
        super().__init__()
        conv, _, _, _ = _layers(dims)
        deep_to_shallow = list(widths)[::-1]
        self.ups = nn.ModuleList(
            UpBlock(deep, skip, dims) for deep, skip in zip(deep_to_shallow, deep_to_shallow[1:])
        )
        self.out_conv = conv(widths[0], num_classes, kernel_size=3, padding=1)

    def forward(self, encoder_maps: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """encoder_maps [e0..e4] -> (logits, [e4, d1, d2, d3, d4])."""
        skips = encoder_maps[-2::-1]
        x = encoder_maps[-1]
        features = [x]
        for up, skip in zip(self.ups, skips):
            x = up(x, skip)
            features.append(x)
        return self.out_conv(x), features


class UNet(nn.Module):
    """UNet backbone for ``dims`` = 2 (slices) or 3 (patches); see the module docstring.

    Spatial sizes must be divisible by ``2 ** (len(widths) - 1)`` (16 for five levels) so that
    every skip connection lines up; other sizes raise a ValueError naming the shape.
    """

    fixed_dims: int | None = None  # set by the 2-D / 3-D subclasses

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        widths: Sequence[int] = PAPER_WIDTHS,
        dropout: Sequence[float] = PAPER_DROPOUT,
        dims: int | None = None,
    ) -> None:
        super().__init__()
        fixed = self.fixed_dims
        if fixed is not None and dims not in (None, fixed):
            raise ValueError(f"{type(self).__name__} is {fixed}-D, got dims={dims!r}")
        dims = dims if dims is not None else (fixed or 2)
        _layers(dims)
        if len(widths) != len(dropout) or len(widths) < 2:
            raise ValueError(
                f"widths {tuple(widths)} and dropout {tuple(dropout)} must have the same length (>= 2)"
            )
        if num_classes < 1 or in_channels < 1 or min(widths) < 1:
            raise ValueError(
                f"channel counts must be positive: in_channels={in_channels}, "
                f"num_classes={num_classes}, widths={tuple(widths)}"
            )
        self.dims = dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = tuple(int(w) for w in widths)
        self.encoder = Encoder(in_channels, self.widths, tuple(dropout), dims)
        self.decoder = Decoder(self.widths, num_classes, dims)

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (len(self.widths) - 1)

    @property
    def feature_channels(self) -> int:
        """Channels of the concatenated ``features`` (input width of the representation head)."""
        return sum(self.widths)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError that names the shape if ``x`` cannot pass through the network."""
        shape = tuple(x.shape)
        if x.dim() != self.dims + 2 or shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, {', '.join(['size'] * self.dims)}), got {shape}"
            )
        m = self.size_multiple
        if any(s % m for s in shape[2:]):
            raise ValueError(
                f"input spatial size {shape[2:]} (shape {shape}) must be divisible by {m}; "
                f"resize or pad the {'slices' if self.dims == 2 else 'patches'} to a multiple of {m}"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder only: x (B, in, *S) -> [e0, ..., e4]; ``[-1]`` is the bottleneck.

        P1 needs nothing but the bottleneck (its decoder is frozen and its local branch unused),
        so the step can skip the decoder's cost.
        """
        self.check_input(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> UNetOutput:
        """x (B, in_channels, *S) -> UNetOutput(logits, bottleneck, features)."""
        maps = self.encode(x)
        logits, features = self.decoder(maps)
        return UNetOutput(logits, maps[-1], features)


class UNet2d(UNet):
    """The SSL4MIS 2-D UNet of the published ACDC/LiTS runs (method.md §2.1); `UNet` with dims=2."""

    fixed_dims = 2


class UNet3d(UNet):
    """A 3-D UNet with the 2-D block structure, used in place of the published VNet (§2.1).

    This is *not* the UA-MT VNet: it keeps the 2-D layout (concat skips, ConvBlocks with
    BN + LeakyReLU + dropout, max-pooling) with 3-D convolutions, so both variants share one
    code path and one `UNetOutput`. Consequences, by design:

    * the global heads read the **bottleneck** (``widths[-1]`` channels at S/16), not the VNet's
      first decoder feature (128 ch at S/8);
    * ``features`` is [e4, d1, d2, d3, d4] like in 2-D (``sum(widths)`` channels), not the VNet's
      [128, 64, 32, 16, 16] list;
    * the inputs must be divisible by 16 on every axis (112x112x80 is).
    """

    fixed_dims = 3


def freeze_decoder(unet: UNet) -> None:
    """Stop gradients into the decoder (P1: the published 2-D run trains the encoder only).

    The frozen parameters keep their values; BN running statistics still follow the forward
    passes, as in the published code.
    """
    unet.decoder.requires_grad_(False)
