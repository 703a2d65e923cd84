"""Building blocks shared by the unfolding stages and the heads: norms, GDFN, prior cross-attention,
resampling, nnU-Net-style conv blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network (Restormer): 1x1 expand, 3x3 depthwise, GELU gate, 1x1 project.

    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class PriorCrossAttention(nn.Module):
    """Cross-attention with image features as queries and prior tokens as keys/values (App. D, Eq. 10).

    ``x`` (B, C, H, W), ``tokens`` (B, T, P) -> (B, C, H, W). Each pixel attends over the T prior
    tokens, so the cost is O(H W T C): linear in the number of pixels.
    """

    def __init__(self, channels: int, prior_dim: int, heads: int) -> None:
        super().__init__()
        heads = max(1, min(heads, channels // 8)) if channels >= 8 else 1
        if channels % heads:
            heads = 1
        self.heads = heads
        self.q = nn.Conv2d(channels, channels, 1, bias=False)
        self.kv = nn.Linear(prior_dim, 2 * channels, bias=False)
        self.out = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, self.heads, d, h * w).transpose(-1, -2)  # (B, h, HW, d)
        k, v = self.kv(tokens).chunk(2, dim=-1)  # (B, T, C) each
        k = k.reshape(b, -1, self.heads, d).transpose(1, 2)  # (B, h, T, d)
        v = v.reshape(b, -1, self.heads, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, h, HW, d)
        self.last_attn_shape = (b, self.heads, h * w, k.shape[2], d)  # read by the MAC counter
        o = o.transpose(-1, -2).reshape(b, c, h, w)
        return self.out(o)


class Downsample(nn.Module):
    """Halve the resolution and double the channels: 3x3 conv to C/2, then PixelUnshuffle(2)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, out_channels // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution: 3x3 conv to 4*C_out, then PixelShuffle(2)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, out_channels * 4, 3, padding=1, bias=False), nn.PixelShuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def band_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency decomposition of Eq. (4): ``low = AvgPool(x)`` (2x2, stride 2), ``high = x - up(low)``.

    ``x`` (B, C, H, W) with even H, W -> ``low`` (B, C, H/2, W/2), ``high`` (B, C, H, W).
    """
    low = F.avg_pool2d(x, 2)
    return low, x - F.interpolate(low, scale_factor=2.0, mode="nearest")


def conv_norm_act(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias) -> instance norm (GroupNorm with one channel per group, as nnU-Net) -> LeakyReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(cout, cout),
                         nn.LeakyReLU(0.01, inplace=True))


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """Two :func:`conv_norm_act` as one flat Sequential (a U-Net level): (B, cin, H, W) -> (B, cout, H, W)."""
    return nn.Sequential(*conv_norm_act(cin, cout), *conv_norm_act(cout, cout))


class UNetTrunk(nn.Module):
    """nnU-Net's 2-D encoder-decoder without a classifier: per level :func:`double_conv`, strided-conv down,
    transposed-conv up, skip concatenation. Shared by the U-Net baseline and the U-Net segmentation head."""

    def __init__(self, widths: tuple[int, ...], in_channels: int) -> None:
        super().__init__()
        w = list(widths)
        self.enc = nn.ModuleList(double_conv(in_channels if i == 0 else w[i], w[i]) for i in range(len(w)))
        self.down = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 2, stride=2) for i in range(len(w) - 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(double_conv(2 * w[i], w[i]) for i in range(len(w) - 1))

    def trunk(self, z: torch.Tensor, add: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, in_channels, H, W), H and W multiples of 2^(levels - 1) -> (B, widths[0], H, W). ``add``: encoder
        level -> a tensor added to that level's features (before the skip and the down step)."""
        skips = []
        for i, enc in enumerate(self.enc):
            z = enc(z)
            if add and i in add:
                z = z + add[i]
            if i < len(self.down):
                skips.append(z)
                z = self.down[i](z)
        for i in reversed(range(len(self.up))):
            z = self.dec[i](torch.cat([self.up[i](z), skips[i]], 1))
        return z
