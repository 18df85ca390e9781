"""Pixel-level autoregression: p(x) = prod_i p(x_i | x_<i) over pixels in raster order.

Here, a pixel transformer (Chen et al. 2020, "Generative Pretraining from Pixels", at toy
scale): each grey level is a token, a class token starts the sequence, and a causal
transformer from minigen.nn predicts the next pixel. It is also minigen's reference model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, cfg_mix, check_labels, check_sampling_args, sample_logits


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


class PixelGPT(nn.Module):
    """A causal transformer over the pixels of an image, one token per pixel."""

    Config = PixelGPTConfig

    def __init__(self, config: PixelGPTConfig):
        super().__init__()
        self.config = config
        self.n_pixels = config.image_size ** 2
        # the sequence is [class token, x_1, ..., x_{D-1}]; position t predicts pixel t
        self.transformer = Transformer(TransformerConfig(
            n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
            max_len=self.n_pixels, pos="learned", dropout=config.dropout))
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.pixel_emb = nn.Embedding(config.n_levels, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.n_levels)
        nn.init.normal_(self.pixel_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # --- data <-> tokens ---
    def to_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> pixel tokens (B, D) in [0, n_levels)."""
        s = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, s, s):
            raise ValueError(f"expected images (B, 1, {s}, {s}), got {tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        return (images.clamp(0, 1) * (self.config.n_levels - 1)).round().long().flatten(1)  # (B, D)

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        return (tokens.float() / (self.config.n_levels - 1)).view(-1, 1, s, s)  # (B, 1, H, W)

    def _split(self, batch):
        images, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        return self.to_tokens(images), (labels if self.config.n_classes > 0 else None)

    # --- the model ---
    def embed(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Tokens (B, t) of the first t pixels -> input embeddings (B, t + 1, C), class token first."""
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.n_levels):
            raise ValueError(f"pixel tokens must lie in [0, {self.config.n_levels}), "
                             f"got min {int(tokens.min())}, max {int(tokens.max())}")
        start = self.class_emb(labels, batch=tokens.shape[0]).unsqueeze(1)  # (B, 1, C)
        return torch.cat([start, self.pixel_emb(tokens)], dim=1)  # (B, t + 1, C)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, D) -> logits (B, D, n_levels) where logits[:, i] only sees tokens[:, :i]."""
        emb = self.embed(tokens[:, :-1], labels)  # (B, D, C)
        return self.head(self.transformer(emb, mask="causal"))  # (B, D, V)

    def nll(self, batch) -> torch.Tensor:
        """Negative log-likelihood in nats per image, (B,)."""
        tokens, labels = self._split(batch)
        logits = self(tokens, labels)  # (B, D, V)
        return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").sum(1)  # (B,)

    def loss(self, batch) -> torch.Tensor:
        """Mean nats per pixel, the training objective."""
        return self.nll(batch).mean() / self.n_pixels

    # --- sampling ---
    @torch.no_grad()
    def sample(self, n: int, labels=None, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, cfg_scale: float = 1.0, generator: torch.Generator | None = None,
               progress: bool = False, use_cache: bool = True, return_trace: bool = False):
        """Generate n images (n, 1, H, W) in [0, 1], one pixel per network pass.

        use_cache=True keeps keys/values of earlier pixels (one new token per pass);
        use_cache=False recomputes the whole prefix every pass, the same result slower.
        return_trace=True also returns {"frames": (F, n, 1, H, W)} snapshots of the canvas
        (pixels not yet generated shown as 0.5) and the step of each frame.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        device = next(self.parameters()).device
        if labels is not None:
            if self.config.n_classes == 0:
                raise ValueError("this model is unconditional: pass labels=None")
            labels = check_labels(labels, self.config.n_classes, n).to(device)
        guided = labels is not None and cfg_scale != 1.0
        if guided:  # conditional and unconditional rows in one batch
            labels = torch.cat([labels, self.class_emb.null_labels(n, device)])
        rows = 2 * n if guided else n
        was_training = self.training
        self.eval()
        tokens = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (rows, t)
        cache = self.transformer.new_cache(rows) if use_cache else None
        frames, frame_steps = [], []
        every = max(1, self.n_pixels // 16)
        for t in tqdm(range(self.n_pixels), desc="pixels", **({} if progress else {"disable": True})):
            if cache is None:
                hidden = self.transformer(self.embed(tokens, labels), mask="causal")[:, -1]  # (rows, C)
            else:  # prefill the class token at t = 0, then feed only the newest pixel
                new = self.embed(tokens, labels) if t == 0 else self.pixel_emb(tokens[:, -1:])  # (rows, 1, C)
                hidden = self.transformer(new, mask="causal", cache=cache)[:, -1]  # (rows, C)
            logits = self.head(hidden)  # (rows, V)
            if guided:
                logits = cfg_mix(logits[:n], logits[n:], cfg_scale)  # (n, V)
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)  # (n,)
            if guided:
                nxt = torch.cat([nxt, nxt])
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (rows, t + 1)
            if return_trace and ((t + 1) % every == 0 or t + 1 == self.n_pixels):
                canvas = torch.full((n, self.n_pixels), 0.5, device=device)
                canvas[:, : t + 1] = tokens[:n].float() / (self.config.n_levels - 1)
                frames.append(canvas.view(n, 1, self.config.image_size, -1).cpu())
                frame_steps.append(t + 1)
        self.train(was_training)
        images = self.to_images(tokens[:n])
        if return_trace:
            return images, {"frames": torch.stack(frames), "steps": frame_steps, "passes": self.n_pixels}
        return images


PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=4, n_head=4, n_embd=96), steps=1500, batch_size=32, lr=1e-3),
    "gpu": dict(config=dict(n_layer=6, n_head=8, n_embd=256), steps=4000, batch_size=128, lr=5e-4),
}
DATA = dict(name="mnist-subset", binarize=True, size=14)
