"""AR with a per-token diffusion head: MAR (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization").

Tokens stay continuous (a KL autoencoder's 7x7 latents), so no softmax over a codebook can model them. A
bidirectional transformer sees the known tokens and gives a vector z per unknown position; a small MLP denoiser
learns p(token | z) with the DDPM loss. Generation fills random sets of positions in a few passes, as MaskGIT does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.masked_ar import masked_count
from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, eval_mode, progress_bar
from minigen.sampling import check_sampling_args
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import AEConfig, ContinuousAE, OnTokenizer


def cosine_alpha_bar(n_steps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar_t, the signal fraction left after step t = 0..n_steps-1,
    (n_steps,) float64. Each beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} is capped at 0.999 (the last ones)."""
    f = torch.cos((torch.arange(n_steps + 1, dtype=torch.float64) / n_steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer timesteps (N,) -> sinusoidal features (N, dim), as for transformer positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * freqs  # (N, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (N, dim)


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LayerNorm(x) * (1 + scale) + shift), with (shift, scale, gate) computed from the
    condition. The condition layer starts at zero, so every block starts as the identity (DiT's adaLN-Zero)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, cond):
        shift, scale, gate = self.ada(cond).chunk(3, dim=-1)  # each (N, W)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    """A small denoiser eps(x_t, t, z) for one token x in R^D, conditioned on a vector z in R^C.

    Trained with the DDPM noise-prediction loss on a cosine schedule of `n_steps` steps; sampled with
    S <= n_steps of those steps (the others skipped, DDPM "respacing") and the noise of every step times a
    temperature. The output layer starts at zero: the first prediction of the noise is 0.
    """

    def __init__(self, data_dim: int, cond_dim: int, width: int = 256, depth: int = 3, n_steps: int = 1000):
        super().__init__()
        self.data_dim, self.width, self.n_steps = data_dim, width, n_steps
        self.register_buffer("alpha_bar", cosine_alpha_bar(n_steps).float(), persistent=False)
        self.register_buffer("x0_bound", torch.zeros(()))  # largest |token entry| seen in training
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.in_proj = nn.Linear(data_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, data_dim)
        for layer in (self.out_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Noisy tokens (N, D), timesteps (N,), conditions (N, C) -> predicted noise (N, D)."""
        cond = self.time_mlp(timestep_embedding(t, self.width)) + self.cond_proj(z)  # (N, W)
        h = self.in_proj(x_t)  # (N, W)
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.out_ada(cond).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)  # (N, D)

    def loss(self, x0: torch.Tensor, z: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """DDPM loss ||eps - eps_hat(sqrt(a) x0 + sqrt(1 - a) eps, t, z)||^2 at a random step t, with `repeats`
        noise draws per token: the transformer's pass is the expensive part, so it is reused."""
        if x0.dim() != 2 or x0.shape[1] != self.data_dim or z.shape[0] != x0.shape[0]:
            raise ValueError(
                f"expected tokens (N, {self.data_dim}) and conditions (N, C), "
                f"got {tuple(x0.shape)} and {tuple(z.shape)}"
            )
        if self.training:
            self.x0_bound.copy_(torch.maximum(self.x0_bound, x0.detach().abs().max().float()))
        x0, z = x0.repeat(repeats, 1), z.repeat(repeats, 1)  # (N * repeats, D), (N * repeats, C)
        t = torch.randint(0, self.n_steps, (x0.shape[0],), device=x0.device)
        a = self.alpha_bar[t][:, None]  # (N, 1)
        noise = torch.randn_like(x0)
        return F.mse_loss(self(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, z), noise)

    def respaced(self, steps: int):
        """The `steps` timesteps sampling visits, high to low, with alpha_bar there and at the next one."""
        t = torch.linspace(self.n_steps - 1, 0, steps, device=self.alpha_bar.device).round().long()  # (S,)
        a = self.alpha_bar[t]  # (S,)
        a_next = torch.cat([a[1:], a.new_ones(1)])  # the step after the last is the clean token: alpha_bar = 1
        return t, a, a_next

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        *,
        diffusion_steps: int = 50,
        temperature: float = 1.0,
        z_uncond=None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ):
        """Draw one token per condition z (N, C) -> (N, D) by ancestral DDPM sampling in `diffusion_steps` steps.

        Each step predicts the noise, forms the posterior mean of the cleaner token and adds Gaussian noise
        of the posterior's std times `temperature` (0: the deterministic mean path). With z_uncond (N, C) the
        prediction is guided: eps_u + cfg_scale * (eps_c - eps_u). return_trajectory adds (diffusion_steps + 1, N, D).
        """
        if not isinstance(diffusion_steps, int) or not 1 <= diffusion_steps <= self.n_steps:
            raise ValueError(f"diffusion_steps must be an integer in [1, {self.n_steps}], got {diffusion_steps!r}")
        check_sampling_args(temperature, cfg_scale=cfg_scale)
        n, device = z.shape[0], z.device
        gen_device = generator.device if generator is not None else device

        def randn():
            return torch.randn(n, self.data_dim, generator=generator, device=gen_device).to(device)

        guided = z_uncond is not None and cfg_scale != 1.0
        cond = torch.cat([z, z_uncond]) if guided else z  # (N or 2N, C)
        bound = float(self.x0_bound) if self.x0_bound > 0 else float("inf")  # untrained: no clipping
        x = randn()  # (N, D): pure noise at the top of the schedule
        path = [x]
        for t, a, a_next in zip(*self.respaced(diffusion_steps)):
            eps = self(torch.cat([x, x]) if guided else x, t.expand(cond.shape[0]), cond)  # (N or 2N, D)
            if guided:
                eps = eps[n:] + cfg_scale * (eps[:n] - eps[n:])
            beta = 1 - a / a_next
            # the clean token the noise prediction implies; at the top of the schedule sqrt(alpha_bar) ~ 5e-5
            # turns any error of eps into a huge one, so it is kept within the range of the training tokens
            x0_hat = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-bound, bound)
            mean = (a_next.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - a_next) * x) / (1 - a)
            std = (beta * (1 - a_next) / (1 - a)).sqrt()  # 0 at the last step
            x = mean + temperature * std * randn()
            path.append(x)
        return (x, torch.stack(path)) if return_trajectory else x


@dataclass
class DiffusionHeadConfig(TokenModelConfig):
    """The fields of a transformer over continuous tokens with a diffusion head (MAR, notebook 13's causal MAR)."""

    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(AEConfig()))  # the frozen autoencoder's config
    head_width: int = 128  # width of the MLP denoiser
    head_depth: int = 3  # AdaLN residual blocks in the denoiser
    train_diffusion_steps: int = 1000  # steps of the DDPM cosine noise schedule the head trains on
    head_repeats: int = 4  # noise draws per token and transformer pass during training


@dataclass
class MARConfig(DiffusionHeadConfig):
    mask_min: float = 0.7  # training mask ratio ~ normal(1, mask_std) truncated to [mask_min, 1]
    mask_std: float = 0.25


class MAR(OnTokenizer, nn.Module):
    """A bidirectional transformer over [class token, 49 continuous tokens] in which some tokens are
    replaced by a learned [MASK] vector; its output at each position conditions the diffusion head."""

    Config = MARConfig

    def __init__(self, config: MARConfig):
        super().__init__()
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(AEConfig(**config.tokenizer), ContinuousAE)
        self.token_dim = self.tokenizer.config.latent_dim
        self.transformer = Transformer(
            TransformerConfig(
                n_layer=config.n_layer,
                n_head=config.n_head,
                n_embd=config.n_embd,
                max_len=self.seq_len + 1,
                pos="learned",
                dropout=config.dropout,
            )
        )
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.token_in = nn.Linear(self.token_dim, config.n_embd)
        self.mask_emb = nn.Parameter(0.02 * torch.randn(config.n_embd))
        self.head = DiffusionHead(
            self.token_dim, config.n_embd, config.head_width, config.head_depth, config.train_diffusion_steps
        )

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) or tokens (B, g, g, D) / (B, L, D) -> checked tokens (B, L, D)."""
        size = self.tokenizer.config.image_size
        if x.dim() == 4 and tuple(x.shape[1:]) == (1, size, size):
            return self.tokenizer.encode(x).flatten(1, 2)  # (B, L, D)
        if x.dim() == 3:
            x = x.reshape(x.shape[0], self.grid, self.grid, -1) if x.shape[1] == self.seq_len else x
        return self.tokenizer.check_tokens(x).flatten(1, 2)  # (B, L, D)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, L, D) and mask (B, L) bool, True = unknown -> conditions z (B, L, C) for the head.
        A masked token's value never reaches the network: its input is the [MASK] vector."""
        x = torch.where(mask[..., None], self.mask_emb, self.token_in(tokens))  # (B, L, C)
        start = self.class_emb(labels, batch=tokens.shape[0]).unsqueeze(1)  # (B, 1, C)
        return self.transformer(torch.cat([start, x], dim=1), mask="full")[:, 1:]  # (B, L, C)

    def mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """One training mask ratio ~ N(1, mask_std) truncated to [mask_min, 1], by inverting the normal CDF."""
        c = self.config
        lo = torch.special.ndtr(torch.tensor((c.mask_min - 1.0) / c.mask_std, dtype=torch.float64))
        u = lo + (0.5 - lo) * torch.rand((), generator=generator, dtype=torch.float64)  # Phi(0) = 0.5
        return float(1.0 + c.mask_std * torch.special.ndtri(u))

    def random_mask(self, batch: int, device) -> torch.Tensor:
        """(B, L) bool: the same ratio for the batch, ceil(ratio * L) random positions masked in each row."""
        n_masked = max(1, math.ceil(self.mask_ratio() * self.seq_len))
        ranks = torch.rand(batch, self.seq_len, device=device).argsort(1).argsort(1)  # (B, L) random permutation
        return ranks < n_masked

    def masked_loss(self, tokens: torch.Tensor, mask: torch.Tensor, labels=None) -> torch.Tensor:
        """The diffusion loss on the masked tokens only, each conditioned on its own z."""
        z = self(tokens, mask, labels)  # (B, L, C)
        return self.head.loss(tokens[mask], z[mask], self.config.head_repeats)

    def loss(self, batch) -> torch.Tensor:
        x, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        tokens = self.to_tokens(x)
        labels = labels if self.n_classes else None
        return self.masked_loss(tokens, self.random_mask(tokens.shape[0], tokens.device), labels)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        num_iter: int = 16,
        diffusion_steps: int = 50,
        temperature: float = 1.0,
        cfg_scale: float = 1.0,
        cfg_schedule: str = "linear",
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images (n, 1, H, W) in `num_iter` transformer passes.

        A random order of the 49 positions is drawn per image; pass k fills the next positions of that order
        so that floor(L cos(pi/2 (k+1)/num_iter)) stay unknown (at least one new token per pass), each new
        token drawn by the diffusion head in `diffusion_steps` denoising steps at `temperature`. Guidance mixes the
        head's noise predictions; cfg_schedule "linear" ramps its scale from 1 up to cfg_scale as the image
        fills in (MAR's default), "constant" uses cfg_scale throughout.
        return_trace=True also returns {"generated_at": (n, g, g) pass that made each token, "counts": new
        tokens per pass, "tokens": (num_iter, n, g, g, D) with 0 where unknown, "frames",
        "passes", "head_passes"} (passes: transformer passes; head passes:
        sequential denoiser calls).
        """
        L = self.seq_len
        if not isinstance(num_iter, int) or not 1 <= num_iter <= L:
            raise ValueError(f"num_iter must be an integer in [1, {L}], got {num_iter!r}")
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        check_sampling_args(temperature, cfg_scale=cfg_scale)
        device = self.mask_emb.device
        labels, guided = self.class_emb.sampling_labels(n, labels, cfg_scale)
        with eval_mode(self):
            gen_device = generator.device if generator is not None else device
            order_rank = torch.rand(n, L, generator=generator, device=gen_device).argsort(1).argsort(1).to(device)
            tokens = torch.zeros(n, L, self.token_dim, device=device)  # (n, L, D)
            generated_at = torch.full((n, L), -1, dtype=torch.long, device=device)
            counts, snapshots, done = [], [], 0
            for k in progress_bar(range(num_iter), progress, desc="MAR passes"):
                unknown = generated_at < 0  # (n, L), the same count in every row
                left = 0 if k == num_iter - 1 else max(1, min(masked_count(L, k, num_iter), L - done - 1))
                new = (order_rank >= done) & (order_rank < L - left)  # (n, L): the next positions of each order
                z = self(
                    torch.cat([tokens, tokens]) if guided else tokens,
                    torch.cat([unknown, unknown]) if guided else unknown,
                    labels,
                )  # (rows, L, C)
                scale = cfg_scale if cfg_schedule == "constant" else 1 + (cfg_scale - 1) * (L - left) / L
                z_new = z[:n][new]  # (n * count, C), row-major: image by image
                z_uncond = z[n:][new] if guided else None
                tokens[new] = self.head.sample(
                    z_new,
                    diffusion_steps=diffusion_steps,
                    temperature=temperature,
                    z_uncond=z_uncond,
                    cfg_scale=scale,
                    generator=generator,
                )
                generated_at[new] = k
                counts.append(L - left - done)
                done = L - left
                if return_trace:
                    snapshots.append(tokens.clone().cpu())
        grid = tokens.view(n, self.grid, self.grid, self.token_dim)
        out = grid if return_tokens else self.tokenizer.decode(grid)
        if not return_trace:
            return out
        at = generated_at.view(n, self.grid, self.grid).cpu()
        frames = torch.stack([self.canvas(s.view_as(grid), at <= k) for k, s in enumerate(snapshots)])
        return out, {
            "generated_at": at,
            "counts": counts,
            "frames": frames,
            "tokens": torch.stack(snapshots).view(num_iter, *grid.shape),
            "passes": num_iter,
            "head_passes": num_iter * diffusion_steps,
        }

    @torch.no_grad()
    def canvas(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Partly generated images: tokens (n, g, g, D), known (n, g, g) bool; unknown tokens are set to 0
        (the mean token) before decoding and their patches greyed out."""
        images = self.tokenizer.decode(torch.where(known[..., None], tokens.cpu(), 0.0).to(self.mask_emb.device))
        patch = self.tokenizer.config.image_size // self.grid
        hidden = (~known).unsqueeze(1).repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (n, 1, H, W)
        return images.cpu().masked_fill(hidden, 0.5)


PRESETS = {
    "smoke": dict(
        config=dict(n_layer=1, n_head=2, n_embd=32, head_width=32, head_depth=1), steps=30, batch_size=32, lr=2e-3
    ),
    "cpu": dict(
        config=dict(n_layer=4, n_head=4, n_embd=128, head_width=128, head_depth=3),
        steps=3000,
        batch_size=32,
        lr=2e-3,
        ema=0.998,
    ),
    "gpu": dict(
        config=dict(n_layer=8, n_head=8, n_embd=256, head_width=256, head_depth=3),
        steps=12000,
        batch_size=128,
        lr=1e-3,
        ema=0.9995,
    ),
}
DATA = dict(name="mnist-subset")
TOKENIZER = "ae"  # the CLI trains (or reuses) the continuous autoencoder first and puts it inside
