"""Pixel-level autoregression: p(x) = prod_i p(x_i | x_<i) over pixels in raster order.

Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"):
masked convolutions in a vertical and a horizontal stack, so no blind spot; gated units tanh*sigmoid.
PixelGPT (Chen et al. 2020, "Generative Pretraining from Pixels", toy scale) is the transformer
alternative and minigen's reference model: a class token, then one token per pixel, on the RasterGPT of
raster.py (causal transformer, likelihood, KV-cached sampling loop) that also models the VQ tokens of token_ar.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.data import check_images
from minigen.nn import eval_mode, progress_bar
from minigen.raster import RasterGPT
from minigen.sampling import check_labels, check_sampling_args, sample_logits

# --- the pixel transformer -------------------------------------------------------------------


@dataclass
class PixelGPTConfig:
    image_size: int = 14  # images are image_size x image_size, one channel
    n_levels: int = 2  # grey levels per pixel; 2 = binarised images
    n_classes: int = 10  # class labels; 0 for an unconditional model
    class_drop: float = 0.1  # probability of training with the null class (enables CFG)
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    n_embd: int = 96  # residual width
    dropout: float = 0.0  # dropout inside the transformer


class PixelGPT(RasterGPT):
    """A causal transformer over the pixels of an image, one token per pixel (a RasterGPT)."""

    Config = PixelGPTConfig

    def __init__(self, config: PixelGPTConfig):
        super().__init__(
            config.image_size**2,
            config.n_levels,
            config.n_classes,
            config.class_drop,
            config.n_layer,
            config.n_head,
            config.n_embd,
            config.dropout,
        )
        self.config = config
        self.n_pixels = self.seq_len

    def to_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> pixel tokens (B, D) in [0, n_levels)."""
        check_images(images, self.config.image_size)
        return (images.clamp(0, 1) * (self.config.n_levels - 1)).round().long().flatten(1)  # (B, D)

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        return (tokens.float() / (self.config.n_levels - 1)).view(-1, 1, s, s)  # (B, 1, H, W)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        use_cache: bool = True,
        compile: bool = False,
        return_trace: bool = False,
    ):
        """Generate n images (n, 1, H, W) in [0, 1], one pixel per network pass.

        use_cache=True keeps keys/values of earlier pixels (one new token per pass);
        use_cache=False recomputes the whole prefix every pass, the same result slower.
        return_trace=True also returns {"frames": (F, n, 1, H, W)} snapshots of the canvas
        (pixels not yet generated shown as 0.5) and the step of each frame.
        """
        tokens, snapshots = self.sample_tokens(
            n,
            labels,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            cfg_scale=cfg_scale,
            generator=generator,
            progress=progress,
            use_cache=use_cache,
            compile=compile,
            snapshot_every=max(1, self.n_pixels // 16) if return_trace else None,
        )
        images = self.to_images(tokens)
        if not return_trace:
            return images
        frames = []
        for t, prefix in snapshots:
            canvas = torch.full((n, self.n_pixels), 0.5, device=prefix.device)
            canvas[:, :t] = prefix.float() / (self.config.n_levels - 1)
            frames.append(canvas.view(n, 1, self.config.image_size, -1).cpu())
        return images, {"frames": torch.stack(frames), "steps": [t for t, _ in snapshots], "passes": self.n_pixels}


GPT_PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=4, n_head=4, n_embd=96), steps=1500, batch_size=32, lr=1e-3),
    "gpu": dict(config=dict(n_layer=6, n_head=8, n_embd=256), steps=4000, batch_size=128, lr=5e-4),
}
GPT_DATA = dict(name="mnist-subset", binarize=True, size=14)


# --- Gated PixelCNN ------------------------------------------------------------------------


@dataclass
class PixelCNNConfig:
    image_size: int = 28  # images are image_size x image_size, one channel
    n_levels: int = 2  # 2: Bernoulli head on binarised images; e.g. 256: softmax over grey levels
    n_classes: int = 10  # class labels; 0 for an unconditional model
    channels: int = 32  # width of the vertical and horizontal stacks
    n_layer: int = 6  # gated layers, the first one masked type A
    kernel: int = 3  # (odd) kernel size of the stacks after the first layer
    first_kernel: int = 7  # (odd) kernel size of the first layer: a wide first look is cheap
    head_channels: int = 64  # width of the per-pixel output head


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zeros on top): row r then holds what row r - 1 saw."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # (B, C, H, W)


def shift_right(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0))[..., :-1]  # (B, C, H, W)


def gate(x: torch.Tensor) -> torch.Tensor:
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of both stacks. The vertical stack sees a (k//2 + 1) x k window of rows <= r and
    reaches the horizontal stack only shifted one row down, so pixel (r, c) gets rows < r from it;
    the horizontal stack sees pixels (r, c - k//2 .. c), shifted right once in the first layer
    (mask A: not the pixel itself). Together they cover everything before (r, c): no blind spot."""

    def __init__(self, in_ch: int, ch: int, k: int, n_classes: int, first: bool):
        super().__init__()
        self.k, self.first = k, first
        self.v_conv = nn.Conv2d(in_ch, 2 * ch, (k // 2 + 1, k))
        self.h_conv = nn.Conv2d(in_ch, 2 * ch, (1, k // 2 + 1))
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = nn.Conv2d(ch, ch, 1)
        self.skip = nn.Conv2d(ch, ch, 1)
        self.cond = nn.Embedding(n_classes + 1, 4 * ch) if n_classes else None

    def forward(self, v, h, labels):
        k = self.k
        v_pre = self.v_conv(F.pad(v, (k // 2, k // 2, k // 2, 0)))  # (B, 2C, H, W): rows r-k//2..r
        h_in = shift_right(h) if self.first else h
        h_pre = self.h_conv(F.pad(h_in, (k // 2, 0, 0, 0))) + self.v_to_h(shift_down(v_pre))  # (B, 2C, H, W)
        if self.cond is not None:
            cv, ch = self.cond(labels)[:, :, None, None].chunk(2, dim=1)  # (B, 2C, 1, 1) each
            v_pre, h_pre = v_pre + cv, h_pre + ch
        gated = gate(h_pre)  # (B, C, H, W)
        h_new = self.h_out(gated) + (0 if self.first else h)  # residual, except where channels change
        return gate(v_pre), h_new, self.skip(gated)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN with class conditioning and a Bernoulli (n_levels=2) or softmax head."""

    Config = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if config.kernel % 2 == 0 or config.first_kernel % 2 == 0 or config.n_layer < 1:
            raise ValueError("kernel sizes must be odd and n_layer >= 1")
        if not 2 <= config.n_levels <= 256:
            raise ValueError(f"n_levels must lie in [2, 256], got {config.n_levels}")
        self.config = config
        c = config
        self.layers = nn.ModuleList(
            GatedLayer(
                1 if i == 0 else c.channels,
                c.channels,
                c.first_kernel if i == 0 else c.kernel,
                c.n_classes,
                first=i == 0,
            )
            for i in range(c.n_layer)
        )
        self.out_channels = 1 if c.n_levels == 2 else c.n_levels
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c.channels, c.head_channels, 1),
            nn.ReLU(),
            nn.Conv2d(c.head_channels, self.out_channels, 1),
        )

    def check_images(self, images: torch.Tensor):
        check_images(images, self.config.image_size)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> per-pixel logits over levels (B, L, H, W); the logits at
        (r, c) depend only on the pixels before (r, c) in raster order."""
        self.check_images(images)
        return self._forward_window(images, self.prepare_labels(labels, images.shape[0], images.device))

    def prepare_labels(self, labels, n: int, device) -> torch.Tensor | None:
        """Checked labels (n,); a conditional model given none gets the extra 'no class' index."""
        if labels is not None:
            return check_labels(labels, self.config.n_classes, n).to(device)
        if self.config.n_classes:
            return torch.full((n,), self.config.n_classes, dtype=torch.long, device=device)
        return None

    @property
    def reach(self) -> int:
        """How many rows above, and columns either side, a pixel's logits can depend on."""
        c = self.config
        return c.first_kernel // 2 + (c.n_layer - 1) * (c.kernel // 2) + 1

    def logits_at(self, canvas: torch.Tensor, labels, r: int, c: int) -> torch.Tensor:
        """Logits (B, L) of pixel (r, c), computed on the window of rows r - reach .. r and columns
        c - reach .. c + reach only. Activations near the window's edges differ from the full
        network's, but none of them reaches (r, c), so the result is exact and much cheaper."""
        R = self.reach
        r0, c0 = max(0, r - R), max(0, c - R)
        window = canvas[:, :, r0 : r + 1, c0 : c + R + 1]  # (B, 1, <= R+1, <= 2R+1)
        return self._forward_window(window, labels)[:, :, r - r0, c - c0]

    def _forward_window(self, images, labels):
        v = h = 2 * images - 1  # (B, 1, h, w) centred input
        skips = 0
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)
            skips = skips + skip
        out = self.head(skips)  # (B, 1 or L, h, w)
        if self.out_channels == 1:  # Bernoulli logit l -> two-level logits (0, l)
            out = torch.cat([torch.zeros_like(out), out], dim=1)
        return out  # (B, L, h, w)

    def to_levels(self, images: torch.Tensor) -> torch.Tensor:
        return (images.clamp(0, 1) * (self.config.n_levels - 1)).round().long()[:, 0]  # (B, H, W)

    def nll(self, batch) -> torch.Tensor:
        """Negative log-likelihood in nats per image, (B,)."""
        images, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        self.check_images(images)
        images = self.to_levels(images).unsqueeze(1).float() / (self.config.n_levels - 1)  # exactly on the levels
        logits = self(images, labels if self.config.n_classes else None)  # (B, L, H, W)
        return F.cross_entropy(logits, self.to_levels(images), reduction="none").flatten(1).sum(1)  # (B,)

    def loss(self, batch) -> torch.Tensor:
        """Mean nats per pixel."""
        return self.nll(batch).mean() / self.config.image_size**2

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        given: torch.Tensor | None = None,
        n_given: int = 0,
    ):
        """Generate n images (n, 1, H, W) one pixel per network pass, in raster order.

        With `given` images and `n_given` > 0, the first n_given pixels (raster order) are copied
        from `given` and only the rest is sampled: completion. Each pass runs the network on the
        small window around the current pixel that can influence it (see logits_at).
        """
        s, device = self.config.image_size, next(self.parameters()).device
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        check_sampling_args(temperature, top_k, top_p)
        labels = self.prepare_labels(labels, n, device)
        canvas = torch.zeros(n, 1, s, s, device=device)
        if n_given:
            if given is None or given.shape != (n, 1, s, s) or not 0 <= n_given <= s * s:
                raise ValueError(f"completion needs given images ({n}, 1, {s}, {s}) and 0 <= n_given <= {s * s}")
            canvas.view(n, -1)[:, :n_given] = self.to_levels(given.to(device)).view(n, -1)[:, :n_given].float() / (
                self.config.n_levels - 1
            )
        with eval_mode(self):
            frames, steps, every = [], [], max(1, s * s // 16)
            for i in progress_bar(range(n_given, s * s), progress, desc="pixels"):
                r, c = divmod(i, s)
                logits = self.logits_at(canvas, labels, r, c)  # (n, L)
                level = sample_logits(logits, temperature, top_k, top_p, generator)  # (n,)
                canvas[:, 0, r, c] = level.float() / (self.config.n_levels - 1)
                if return_trace and ((i + 1) % every == 0 or i + 1 == s * s):
                    frame = canvas.clone()
                    frame.view(n, -1)[:, i + 1 :] = 0.5
                    frames.append(frame.cpu())
                    steps.append(i + 1)
        if return_trace:
            return canvas, {
                "frames": torch.stack(frames) if frames else torch.empty(0),
                "steps": steps,
                "passes": s * s - n_given,
            }
        return canvas

    def complete(self, images: torch.Tensor, n_given: int, labels=None, **kwargs) -> torch.Tensor:
        """Keep the first n_given pixels of each image (e.g. 14 * 28 = the top half) and sample the rest."""
        return self.sample(images.shape[0], labels, given=images, n_given=n_given, **kwargs)


class MaskedConv2d(nn.Conv2d):
    """The original PixelCNN layer (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"):
    a k x k convolution whose weights below and right of the centre are zeroed; type A also zeroes
    the centre (first layer: a pixel must not see itself). Stacking these leaves a blind spot."""

    def __init__(self, in_ch: int, out_ch: int, k: int, mask_type: str):
        super().__init__(in_ch, out_ch, k, padding=k // 2)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        mask = torch.ones(k, k)
        mask[k // 2, k // 2 + (mask_type == "B") :] = 0  # centre row: the centre (type A) and right of it
        mask[k // 2 + 1 :] = 0  # rows below
        self.register_buffer("mask", mask[None, None])

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def naive_pixelcnn(n_layer: int = 6, channels: int = 16, k: int = 3) -> nn.Sequential:
    """A plain stack of masked convolutions (A, then B), for showing the blind spot."""
    layers = [MaskedConv2d(1, channels, k, "A")]
    for _ in range(n_layer - 1):
        layers += [nn.ReLU(), MaskedConv2d(channels, channels, k, "B")]
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(channels, 1, 1))


PRESETS = {
    "smoke": dict(config=dict(channels=16, n_layer=3, head_channels=32), steps=20, batch_size=16, lr=2e-3),
    "cpu": dict(config=dict(channels=32, n_layer=8), steps=2000, batch_size=32, lr=2e-3, ema=0.995),
    "gpu": dict(
        config=dict(channels=96, n_layer=12, head_channels=256), steps=6000, batch_size=128, lr=1e-3, ema=0.999
    ),
}
DATA = dict(name="mnist-subset", binarize=True)
