"""Image tokenizers: a 28x28 image <-> a 7x7 grid of tokens, the vocabulary every token model uses.

VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"): a conv encoder
downsamples by 4, each latent vector snaps to its nearest codebook entry (straight-through gradient),
a conv decoder maps the codes back. ConvEncoder / ConvDecoder and quant.py's VectorQuantizer are the shared
parts; MultiScaleVQ (VAR) quantises coarse to fine, ContinuousAE (MAR) keeps the 7x7 latents continuous.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.data import check_images
from minigen.nn import eval_mode
from minigen.quant import VectorQuantizer, area_resize, codebook_usage, in_fp32


@dataclass
class VQConfig:
    image_size: int = 28  # input images are image_size x image_size, one channel, values in [0, 1]
    channels: int = 64  # conv width at the latent resolution (half of it at the middle one)
    n_res: int = 2  # residual blocks at the latent resolution, in the encoder and in the decoder
    latent_dim: int = 16  # dimension of a token vector: low, so nearest-code search is meaningful
    n_codes: int = 256  # codebook size = vocabulary of the token models
    beta: float = 0.25  # commitment weight: how hard the encoder is pulled towards its code
    restart_every: int = 100  # training steps between dead-code restarts; 0 disables them
    dead_below: float = 1.0  # a code used less than this many times per batch (moving average) is dead
    usage_decay: float = 0.99  # decay of that moving average of usage counts

    def __post_init__(self):
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two stride-2 stages), got {self.image_size}")
        if self.n_codes < 2 or self.latent_dim < 1:
            raise ValueError(f"need n_codes >= 2 and latent_dim >= 1, got {self.n_codes}, {self.latent_dim}")


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        return x + self.net(x)


class ConvEncoder(nn.Module):
    """Images (B, 1, H, W) -> latents (B, out_dim, H/4, W/4)."""

    def __init__(self, channels: int, n_res: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels // 2, 4, stride=2, padding=1),
            nn.ReLU(),  # 28 -> 14
            nn.Conv2d(channels // 2, channels, 4, stride=2, padding=1),  # 14 -> 7
            *[ResBlock(channels) for _ in range(n_res)],
            nn.ReLU(),
            nn.Conv2d(channels, out_dim, 1),
        )

    def forward(self, images):
        return self.net(2 * images - 1)  # centred input


class ConvDecoder(nn.Module):
    """Latents (B, in_dim, H/4, W/4) -> pixel logits (B, 1, H, W); sigmoid gives the image."""

    def __init__(self, channels: int, n_res: int, in_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, channels, 3, padding=1),
            *[ResBlock(channels) for _ in range(n_res)],
            nn.ReLU(),
            nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1),
            nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(channels // 2, 1, 4, stride=2, padding=1),
        )  # 14 -> 28

    def forward(self, latents):
        return self.net(latents)


class ImageTokenizer(nn.Module):
    """What every tokenizer here shares: the input check and reconstruct = decode(encode(images))."""

    def check_images(self, images: torch.Tensor):
        check_images(images, self.config.image_size)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


class VQVAE(ImageTokenizer):
    """Encoder -> vector quantiser -> decoder. encode(images) gives token grids, decode(tokens) images."""

    Config = VQConfig

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = c = config
        self.grid = c.image_size // 4
        self.encoder = ConvEncoder(c.channels, c.n_res, c.latent_dim)
        self.quantizer = VectorQuantizer(c.n_codes, c.latent_dim, c.beta, c.restart_every, c.dead_below, c.usage_decay)
        self.decoder = ConvDecoder(c.channels, c.n_res, c.latent_dim)
        self._last = {}

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        g, k = self.grid, self.config.n_codes
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (g, g):
            raise ValueError(f"expected token grids (B, {g}, {g}), got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer code ids, got dtype {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= k):
            raise ValueError(f"token ids must lie in [0, {k}), got min {int(tokens.min())}, max {int(tokens.max())}")
        return tokens.long()

    def forward(self, images: torch.Tensor):
        """Images (B, 1, H, W) -> (reconstruction logits (B, 1, H, W), codes (B, g, g), quantiser loss)."""
        self.check_images(images)
        quant, codes, vq_loss = self.quantizer(self.encoder(images))  # (B, D, g, g), (B, g, g)
        return self.decoder(quant), codes, vq_loss

    def loss(self, batch) -> torch.Tensor:
        """Reconstruction cross-entropy per pixel + codebook and commitment losses."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits, _, vq_loss = self(images)
        # pixels are near-binary: cross-entropy keeps its gradient where a sigmoid + MSE saturates
        recon = F.binary_cross_entropy_with_logits(logits, images)
        self._last = {"mse": F.mse_loss(torch.sigmoid(logits.detach()), images).item()}
        return recon + vq_loss

    def train_status(self) -> dict:
        """Shown in fit()'s progress bar: last reconstruction MSE and the share of live codes."""
        if not self._last:
            return {}
        q = self.quantizer
        return {"mse": f"{self._last['mse']:.4f}", "live": f"{q.active_fraction():.0%}", "restarted": int(q.restarted)}

    @torch.no_grad()
    @in_fp32
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> token grids (B, H/4, W/4) of code ids."""
        self.check_images(images)
        z = self.encoder(images.float())  # (B, D, g, g)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*g*g, D)
        return self.quantizer.nearest(flat).view(images.shape[0], self.grid, self.grid)

    @torch.no_grad()
    @in_fp32
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids (B, g, g) -> images (B, 1, H, W) in [0, 1]."""
        tokens = self.check_tokens(tokens).to(self.quantizer.codebook.weight.device)
        return torch.sigmoid(self.decoder(self.quantizer.lookup(tokens)))

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, batch_size: int = 500) -> dict:
        """Reconstruction MSE per pixel and codebook usage on a set of images (N, 1, H, W)."""
        with eval_mode(self):
            device = self.quantizer.codebook.weight.device
            codes, sq_err = [], 0.0
            for chunk in images.split(batch_size):
                chunk = chunk.to(device)
                tok = self.encode(chunk)
                sq_err += float((self.decode(tok) - chunk).square().sum())
                codes.append(tok.cpu())
        usage = codebook_usage(torch.cat(codes), self.config.n_codes)
        return {
            "mse": sq_err / images.numel(),
            "perplexity": usage["perplexity"],
            "used_fraction": usage["used_fraction"],
            "counts": usage["counts"],
            "bits_per_image": self.grid**2 * math.log2(self.config.n_codes),
        }


# --- VAR's multi-scale residual quantizer --------------------------------------------------


@dataclass
class MultiScaleVQConfig(VQConfig):
    scales: tuple = (1, 2, 3, 4, 5, 7)  # side of the token map at each scale; the last is the latent grid
    phi_mix: float = 0.5  # how much of each scale's upsampled codes goes through its phi convolution

    def __post_init__(self):
        super().__post_init__()
        self.scales = tuple(int(s) for s in self.scales)
        grid = self.image_size // 4
        if not self.scales or self.scales[-1] != grid or list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must increase strictly and end at the latent grid {grid}, got {self.scales}")


class MultiScaleVQ(VQVAE):
    """Tian et al. 2024 (VAR): the latent f is quantised coarse to fine with one shared codebook.

    At scale k the remaining residual is area-downsampled to s_k x s_k and snapped to codes; their vectors
    are upsampled back to the full grid, refined by a small convolution phi_k, added to the reconstruction
    f_hat and subtracted from the residual. A scale's codes thus only describe what coarser scales missed.
    """

    Config = MultiScaleVQConfig

    def __init__(self, config: MultiScaleVQConfig):
        super().__init__(config)
        self.phi = nn.ModuleList(nn.Conv2d(config.latent_dim, config.latent_dim, 3, padding=1) for _ in config.scales)

    def scale_vectors(self, codes: torch.Tensor, k: int) -> torch.Tensor:
        """Codes (B, s_k, s_k) of scale k -> their contribution to f_hat at full grid size (B, D, g, g)."""
        up = self.quantizer.lookup(codes)  # (B, D, s_k, s_k)
        if codes.shape[-1] != self.grid:
            up = F.interpolate(up, size=(self.grid, self.grid), mode="bicubic", align_corners=False)
        rho = self.config.phi_mix
        return (1 - rho) * up + rho * self.phi[k](up)  # (B, D, g, g)

    @in_fp32
    def quantize(self, z: torch.Tensor):
        """Latents (B, D, g, g) -> (codes per scale [(B, s, s), ...], f_hat after each scale [(B, D, g, g), ...]).
        In fp32 whatever the autocast: every scale's codes depend on the residuals the coarser ones left."""
        z = z.float()
        residual, f_hat = z, torch.zeros_like(z)
        codes, partial = [], []
        for k, s in enumerate(self.config.scales):
            small = area_resize(residual, s)  # (B, D, s, s)
            flat = small.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*s*s, D)
            idx = self.quantizer.nearest(flat.detach())
            if self.training:
                self.quantizer.track_usage(idx)
            idx = idx.view(-1, s, s)
            contribution = self.scale_vectors(idx, k)  # (B, D, g, g)
            f_hat, residual = f_hat + contribution, residual - contribution
            codes.append(idx)
            partial.append(f_hat)
        if self.training:  # once per step, onto the finest scale's residual vectors
            self.quantizer.restart_dead(flat.detach())
        return codes, partial

    def forward(self, images: torch.Tensor):
        """Images -> (reconstruction logits, codes per scale, quantiser loss averaged over scales)."""
        self.check_images(images)
        z = self.encoder(images).float()  # (B, D, g, g)
        codes, partial = self.quantize(z)
        # codebook and phi learn to make every partial f_hat approach z; the encoder commits to the final one
        vq_loss = sum(F.mse_loss(f, z.detach()) + self.config.beta * F.mse_loss(z, f.detach()) for f in partial)
        f_hat = z + (partial[-1] - z).detach()  # straight-through into the decoder
        return self.decoder(f_hat), codes, vq_loss / len(partial)

    @torch.no_grad()
    @in_fp32
    def encode(self, images: torch.Tensor) -> list:
        """Images (B, 1, H, W) -> codes per scale [(B, s_k, s_k) for s_k in scales]."""
        self.check_images(images)
        return self.quantize(self.encoder(images.float()))[0]

    def check_codes(self, codes) -> list:
        if len(codes) < 1 or len(codes) > len(self.config.scales):
            raise ValueError(f"expected codes for 1..{len(self.config.scales)} scales, got {len(codes)}")
        out = []
        for k, c in enumerate(codes):
            s = self.config.scales[k]
            if c.dim() != 3 or tuple(c.shape[1:]) != (s, s):
                raise ValueError(f"codes of scale {k} must be (B, {s}, {s}), got {tuple(c.shape)}")
            if c.dtype.is_floating_point or c.numel() and (c.min() < 0 or c.max() >= self.config.n_codes):
                raise ValueError(f"token ids must lie in [0, {self.config.n_codes})")
            out.append(c.long().to(self.quantizer.codebook.weight.device))
        return out

    @torch.no_grad()
    @in_fp32
    def f_hat(self, codes) -> torch.Tensor:
        """Codes of the first k scales -> the reconstruction f_hat they define (B, D, g, g)."""
        codes = self.check_codes(codes)
        return sum(self.scale_vectors(c, k) for k, c in enumerate(codes))

    @torch.no_grad()
    @in_fp32
    def decode(self, codes) -> torch.Tensor:
        """Codes of the first k scales (all scales for the full image) -> images (B, 1, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(self.f_hat(codes)))

    @torch.no_grad()
    def next_scale_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """VAR's teacher-forcing input for scale k >= 1: the current f_hat area-downsampled to s_k, (B, D, s_k, s_k)."""
        return area_resize(f_hat, self.config.scales[k])

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, batch_size: int = 500) -> dict:
        """Reconstruction MSE per pixel after each scale, and usage of the shared codebook."""
        with eval_mode(self):
            device = self.quantizer.codebook.weight.device
            sq = torch.zeros(len(self.config.scales))
            codes = []
            for chunk in images.split(batch_size):
                chunk = chunk.to(device)
                per_scale = self.encode(chunk)
                for k in range(len(per_scale)):
                    sq[k] += float((self.decode(per_scale[: k + 1]) - chunk).square().sum())
                codes.append(torch.cat([c.flatten(1) for c in per_scale], 1).cpu())
        usage = codebook_usage(torch.cat(codes), self.config.n_codes)
        mse = (sq / images.numel()).tolist()
        return {
            "mse": mse[-1],
            "mse_per_scale": mse,
            "perplexity": usage["perplexity"],
            "used_fraction": usage["used_fraction"],
            "counts": usage["counts"],
        }


# --- MAR's continuous tokenizer ---------------------------------------------------------------


@dataclass
class AEConfig:
    image_size: int = 28  # input images are image_size x image_size, one channel, values in [0, 1]
    channels: int = 64  # conv width at the latent resolution, as in the VQ-VAE
    n_res: int = 2  # residual blocks at the latent resolution, in the encoder and in the decoder
    latent_dim: int = 4  # dimension of a continuous token: what the diffusion head has to model
    kl_weight: float = 1e-2  # weight of KL(q(z|x) || N(0, I)) per latent number vs the per-pixel loss:
    # 1e-3 reconstructs better (MSE 0.0010 vs 0.0018) but its tokens hold detail MAR failed to model (notebook 06)
    scale_decay: float = 0.99  # moving average of the latents' spread, used to hand out unit-scale tokens

    def __post_init__(self):
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two stride-2 stages), got {self.image_size}")
        if self.latent_dim < 1 or self.kl_weight < 0:
            raise ValueError(f"need latent_dim >= 1 and kl_weight >= 0, got {self.latent_dim}, {self.kl_weight}")


class ContinuousAE(ImageTokenizer):
    """A KL-regularised autoencoder (the "KL-16" tokenizer of MAR, in small): the encoder gives a mean and a
    log-variance per latent number, training decodes a sample from that Gaussian, and a light KL pull towards
    N(0, I) keeps the latent space smooth, so a slightly-off generated token still decodes to a clean patch.
    encode() returns the means divided by their running spread: tokens (B, g, g, D) of unit scale.
    """

    Config = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = c = config
        self.grid = c.image_size // 4
        self.encoder = ConvEncoder(c.channels, c.n_res, 2 * c.latent_dim)  # mean and log-variance
        self.decoder = ConvDecoder(c.channels, c.n_res, c.latent_dim)
        self.register_buffer("latent_std", torch.ones(()))  # spread of the means on training batches
        self._last = {}

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        g, d = self.grid, self.config.latent_dim
        if not torch.is_tensor(tokens) or tuple(tokens.shape[1:]) != (g, g, d) or tokens.dim() != 4:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"expected continuous tokens (B, {g}, {g}, {d}), got {shape}")
        if not tokens.dtype.is_floating_point or not torch.isfinite(tokens).all():
            raise ValueError(f"tokens must be finite floats, got dtype {tokens.dtype}")
        return tokens

    def moments(self, images: torch.Tensor):
        """Images (B, 1, H, W) -> mean and log-variance of q(z | x), each (B, D, g, g)."""
        self.check_images(images)
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def loss(self, batch) -> torch.Tensor:
        """Reconstruction cross-entropy per pixel + kl_weight * KL per latent number."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        mean, logvar = self.moments(images)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()  # reparameterised sample
        logits = self.decoder(z)  # (B, 1, H, W)
        recon = F.binary_cross_entropy_with_logits(logits, images)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        if self.training:
            with torch.no_grad():
                self.latent_std.lerp_(mean.detach().float().std(), 1 - self.config.scale_decay)
        self._last = {"mse": F.mse_loss(torch.sigmoid(logits.detach()), images).item(), "kl": kl.item()}
        return recon + self.config.kl_weight * kl

    def train_status(self) -> dict:
        return {k: f"{v:.4f}" for k, v in self._last.items()}

    @torch.no_grad()
    @in_fp32
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> unit-scale continuous tokens (B, g, g, D): the posterior means."""
        mean, _ = self.moments(images.float())
        return (mean / self.latent_std).permute(0, 2, 3, 1)  # (B, g, g, D)

    @torch.no_grad()
    @in_fp32
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, g, g, D) -> images (B, 1, H, W) in [0, 1]."""
        tokens = self.check_tokens(tokens).to(self.latent_std.device, self.latent_std.dtype)
        return torch.sigmoid(self.decoder(tokens.permute(0, 3, 1, 2) * self.latent_std))

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, batch_size: int = 500) -> dict:
        """Reconstruction MSE per pixel, and the mean and std of the tokens (should be near 0 and 1)."""
        with eval_mode(self):
            sq_err, tokens = 0.0, []
            for chunk in images.split(batch_size):
                chunk = chunk.to(self.latent_std.device)
                tok = self.encode(chunk)
                sq_err += float((self.decode(tok) - chunk).square().sum())
                tokens.append(tok.cpu())
        tokens = torch.cat(tokens)
        return {"mse": sq_err / images.numel(), "token_mean": float(tokens.mean()), "token_std": float(tokens.std())}


PRESETS = {
    "smoke": dict(config=dict(channels=16, n_res=1, restart_every=10), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(channels=64, n_res=2), steps=3000, batch_size=64, lr=2e-3),
    "gpu": dict(config=dict(channels=128, n_res=2), steps=8000, batch_size=128, lr=1e-3),
}
DATA = dict(name="mnist-subset")


class OnTokenizer:
    """Mixin for generative models over a frozen tokenizer's grid (token GPT, MaskGIT, ...).

    The tokenizer lives inside the model (saved with it, never trained by it), so `sample` can
    return images and a checkpoint is self-contained. Call `attach_tokenizer` in __init__.
    """

    def attach_tokenizer(self, config: VQConfig, tokenizer_class=None):
        self.tokenizer = (tokenizer_class or VQVAE)(config).requires_grad_(False).eval()
        self.grid = config.image_size // 4
        self.seq_len, self.vocab_size = self.grid**2, getattr(config, "n_codes", None)  # None: continuous

    @classmethod
    def from_tokenizer(cls, tokenizer: ImageTokenizer, **config):
        """A new model holding a copy of a trained tokenizer's weights; `config` sets the other fields."""
        model = cls(cls.Config(tokenizer=dataclasses.asdict(tokenizer.config), **config))
        model.set_tokenizer(tokenizer)
        return model

    def set_tokenizer(self, tokenizer: ImageTokenizer):
        if tokenizer.config != self.tokenizer.config:
            raise ValueError(f"tokenizer config {tokenizer.config} differs from the model's {self.tokenizer.config}")
        self.tokenizer.load_state_dict(tokenizer.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: no dead-code restarts, deterministic encoding
        return self

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] or token grids (B, g, g) / (B, L) -> checked tokens (B, L)."""
        if x.dtype.is_floating_point:
            return self.tokenizer.encode(x).flatten(1)  # (B, L)
        if x.dim() == 2 and x.shape[1] == self.seq_len:
            x = x.view(-1, self.grid, self.grid)
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.grid, self.grid):
            raise ValueError(
                f"expected token grids (B, {self.grid}, {self.grid}) or (B, {self.seq_len}), got {tuple(x.shape)}"
            )
        return self.tokenizer.check_tokens(x).flatten(1)  # (B, L)

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(tokens.reshape(-1, self.grid, self.grid))  # (B, 1, H, W)

    @torch.no_grad()
    def canvas(self, tokens: torch.Tensor) -> torch.Tensor:
        """Partly generated images from tokens (n, L) with -1 where not generated yet: the missing tokens
        are filled with the most common known code (usually background) and their patches greyed out."""
        tokens = tokens.cpu()  # (MPS has no mode()); decoding below moves them back
        n = tokens.shape[0]
        known = tokens >= 0
        fill = tokens[known].mode().values if known.any() else torch.zeros((), dtype=torch.long)
        images = self.to_images(torch.where(known, tokens, fill).to(self.tokenizer.quantizer.codebook.weight.device))
        patch = self.tokenizer.config.image_size // self.grid
        hidden = (~known).view(n, 1, self.grid, self.grid)
        hidden = hidden.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (n, 1, H, W)
        return images.cpu().masked_fill(hidden.cpu(), 0.5)


MSVQ_PRESETS = PRESETS  # restarts count training steps, not quantizer calls: the same table serves VAR's tokenizer
# the VQ-VAE's sizes and steps, without its codebook fields: notebook 06 sets the two tokenizers side by side
AE_PRESETS = {
    name: {**spec, "config": {k: v for k, v in spec["config"].items() if k in ("channels", "n_res")}}
    for name, spec in PRESETS.items()
}
