"""Quantisation, the step that turns continuous latents into tokens (VQ-VAE; as in VAR's quant.py).

The nearest-code quantiser with the straight-through gradient, the commitment loss and dead-code restarts
(van den Oord et al. 2017); codebook usage statistics; the area resize VAR uses between scales; and the fp32
region quantisation runs in whatever the autocast around it. The tokenizers in tokenizers.py are built on these.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def fp32(module: nn.Module):
    """A region where autocast is off on the module's device: quantisation (distances, argmin, codebook writes)
    and encoding give the same tokens whatever precision the surrounding training step uses."""
    return torch.autocast(next(module.parameters()).device.type, enabled=False)


def in_fp32(method):
    """Decorator: run a tokenizer method with autocast off (see fp32)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with fp32(self):
            return method(self, *args, **kwargs)

    return wrapper


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Box-average downsampling (B, C, g, g) -> (B, C, size, size), the numbers of F.interpolate(mode="area"),
    as two small matrix products: output cell i averages input cells floor(i g / size) .. ceil((i + 1) g / size) - 1.
    (MPS has no adaptive average pooling, which "area" calls, for sizes that do not divide each other.)"""
    g = x.shape[-1]
    if size == g:
        return x
    i = torch.arange(size)
    start, end = (i * g) // size, -(-(i + 1) * g // size)  # floor and ceiling
    cells = torch.arange(g)
    box = ((cells >= start[:, None]) & (cells < end[:, None])).float()  # (size, g)
    box = (box / box.sum(1, keepdim=True)).to(x.device, x.dtype)
    return box @ x @ box.T  # (B, C, size, size)


class VectorQuantizer(nn.Module):
    """Snap each latent vector to its nearest codebook entry.

    Loss: ||sg(z) - e||^2 moves codes towards encoder outputs, beta * ||z - sg(e)||^2 keeps the
    encoder committed to its codes; the decoder's gradient passes straight through (z + sg(e - z)).
    Codes nobody picks get no gradient and stay dead, so every `restart_every` training steps the
    codes whose moving-average usage fell below `dead_below` jump to random encoder outputs of the batch.
    It computes in fp32 whatever the autocast around it: a bf16 distance changes a fifth of the argmins.
    """

    def __init__(
        self,
        n_codes: int,
        dim: int,
        beta: float = 0.25,
        restart_every: int = 100,
        dead_below: float = 1.0,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        self.n_codes, self.beta = n_codes, beta
        self.restart_every, self.dead_below, self.usage_decay = restart_every, dead_below, usage_decay
        self.codebook = nn.Embedding(n_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1 / n_codes, 1 / n_codes)  # as in the paper: all near 0
        self.register_buffer("usage", torch.full((n_codes,), float(dead_below)))  # assignments per batch
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarted", torch.zeros((), dtype=torch.long))  # codes restarted so far

    @in_fp32
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Vectors (N, D) -> index of the nearest code (N,), by squared Euclidean distance."""
        flat, codes = flat.float(), self.codebook.weight.float()  # (N, D), (K, D)
        dist = flat.square().sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.square().sum(1)  # (N, K)
        return dist.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) -> code vectors (B, D, h, w)."""
        return self.codebook(codes).permute(0, 3, 1, 2)

    @in_fp32
    def forward(self, z: torch.Tensor):
        """Latents (B, D, h, w) -> (quantised latents with straight-through gradient, codes (B, h, w), loss)."""
        B, D, h, w = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)  # (N, D)
        codes = self.nearest(flat.detach())  # (N,)
        quant = self.codebook(codes)  # (N, D)
        loss = F.mse_loss(quant, flat.detach()) + self.beta * F.mse_loss(flat, quant.detach())
        if self.training:
            self.track_usage(codes)
            self.restart_dead(flat.detach())
        quant = flat + (quant - flat).detach()  # straight-through: forward = code, backward = identity
        return quant.view(B, h, w, D).permute(0, 3, 1, 2), codes.view(B, h, w), loss

    @torch.no_grad()
    def track_usage(self, codes: torch.Tensor):
        """Update the moving-average usage of every code with the codes (N,) just assigned."""
        counts = torch.bincount(codes, minlength=self.n_codes).float()  # (K,)
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)

    @torch.no_grad()
    def restart_dead(self, flat: torch.Tensor):
        """Called once per training step; every restart_every steps, move the dead codes onto vectors of flat (N, D)."""
        self.steps += 1
        if not self.restart_every or int(self.steps) % self.restart_every:
            return
        dead = (self.usage < self.dead_below).nonzero().flatten()  # (k,)
        if len(dead) == 0:
            return
        pick = torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)
        self.codebook.weight.data[dead] = flat[pick].to(self.codebook.weight.dtype)
        # a fresh code gets the average usage, i.e. some hundred steps to attract vectors before judgement
        self.usage[dead] = flat.shape[0] / self.n_codes
        self.restarted += len(dead)

    def active_fraction(self) -> float:
        """Fraction of codes whose moving-average usage is above the dead threshold."""
        return float((self.usage >= self.dead_below).float().mean())


def codebook_usage(codes: torch.Tensor, n_codes: int) -> dict:
    """Usage of a codebook over a set of code ids: counts (K,), perplexity exp(H) (K if uniform,
    1 if a single code is used) and the fraction of codes used at least once."""
    counts = torch.bincount(codes.flatten().long().cpu(), minlength=n_codes).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"counts": counts, "perplexity": float(entropy.exp()), "used_fraction": float((counts > 0).float().mean())}
