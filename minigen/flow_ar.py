"""Flow matching over whole scales: FlowAR (Ren et al. 2024, arXiv 2412.15205) and xAR (Ren et al. 2025, arXiv
2502.20388), on the continuous 7x7x4 tokens of MAR's autoencoder, coarse to fine over scales (1, 2, 4, 7).

Flow matching learns a velocity v(x_t, t) along the straight path x_t = (1 - t) x + t eps from data (t = 0) to noise
(t = 1) with the loss ||v - (eps - x)||^2; a sampler integrates dx/dt = v from noise back to data in a few Euler
steps. FlowAR: a block-causal transformer reads the class and every coarser scale, and a small flow head turns
noise into the whole next scale at once, conditioned on the transformer's output there. xAR: no separate head, the
transformer itself is the flow network; in training every scale (an "entity") is noised to its own level and,
with noisy context, the model also sees the earlier entities noised, so that imperfect context at generation time
is nothing new to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.diffusion_ar import PRESETS as MAR_PRESETS
from minigen.diffusion_ar import AdaLNBlock, timestep_embedding
from minigen.nn import (
    Attention,
    ClassEmbedding,
    Transformer,
    TransformerConfig,
    block_causal_mask,
    eval_mode,
    progress_bar,
)
from minigen.quant import area_resize
from minigen.sampling import check_sampling_args
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import AEConfig, ContinuousAE, OnTokenizer

TOKENIZER = "ae"
METHODS = ("euler", "heun")


def flow_target(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """The point x_t = (1 - t) x + t noise on the straight path and the velocity eps - x the model must predict
    there; t broadcasts against x ((B, 1, 1) for one level per row)."""
    return (1 - t) * x + t * noise, noise - x


@torch.no_grad()
def integrate(velocity, x1: torch.Tensor, steps: int, method: str = "euler", path: list | None = None) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (x1, noise) down to t = 0 (data) in `steps` equal steps.
    velocity(x, t) takes t as a float; Heun averages the slopes at both ends of a step (twice the calls). A `path`
    list gets the state at every time visited, noise first."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x = x1
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        if path is not None:
            path.append(x)
        v = velocity(x, t)
        if method == "heun" and t_next > 0:  # the last step stays Euler: at t = 0 the ideal slope is just -x
            v = 0.5 * (v + velocity(x + (t_next - t) * v, t_next))
        x = x + (t_next - t) * v
    if path is not None:
        path.append(x)
    return x


def steps_per_scale(flow_steps, scales: int) -> list[int]:
    """`flow_steps` as one step count per scale: an int for all of them, or a sequence with one per scale (fewer
    steps for the finer scales is DiSA's idea)."""
    counts = [flow_steps] * scales if isinstance(flow_steps, int) else list(flow_steps)
    if len(counts) != scales or not all(isinstance(c, int) and c >= 1 for c in counts):
        raise ValueError(f"flow_steps must be a positive int or {scales} of them, one per scale, got {flow_steps!r}")
    return counts


def head_calls(steps: int, method: str) -> int:
    """Sequential velocity evaluations of `steps` steps: Heun evaluates twice per step except on the last."""
    return 2 * steps - 1 if method == "heun" else steps


def guided(velocity_both, n: int, scale: float):
    """Classifier-free guidance on velocities: velocity_both(x, t) gives the conditional velocities of n rows
    stacked on the unconditional ones (2n, ...), in one call; returns v_u + scale (v_c - v_u) for the n rows."""

    def velocity(x, t):
        v = velocity_both(torch.cat([x, x]), t)  # (2n, ...)
        return v[n:] + scale * (v[:n] - v[n:])

    return velocity


class FlowHead(nn.Module):
    """A small velocity network v(x_t, t, z) for a set of N tokens in R^D, each conditioned on a vector z in R^C.
    joint=True lets the tokens of a set attend to each other (FlowAR's head generates a whole scale jointly);
    joint=False treats every token alone, as MAR's per-token head does (the ablation)."""

    def __init__(self, data_dim: int, cond_dim: int, width: int, depth: int, joint: bool, max_tokens: int = 64):
        super().__init__()
        self.data_dim, self.width, self.joint = data_dim, width, joint
        self.in_proj = nn.Linear(data_dim, width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        cfg = TransformerConfig(n_layer=depth, n_head=4 if width % 4 == 0 else 1, n_embd=width, max_len=max_tokens)
        self.mixers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), Attention(cfg)) for _ in range(depth if joint else 0)
        )
        self.out = nn.Linear(width, data_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (B, N, D), t (B,) in [0, 1], z (B, N, C) -> velocity (B, N, D)."""
        cond = self.cond_proj(z) + self.time_mlp(timestep_embedding(1000 * t, self.width))[:, None]  # (B, N, W)
        h = self.in_proj(x_t) + cond  # (B, N, W)
        for i, block in enumerate(self.blocks):
            if self.joint:  # attention across the set's tokens (no mask: all see all), then the per-token MLP
                norm, attention = self.mixers[i]
                h = h + attention(norm(h), None, None)
            h = block(h, cond)
        return self.out(h)  # (B, N, D)

    def loss(self, x: torch.Tensor, z: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Flow-matching loss for sets x (B, N, D) given z (B, N, C): one level t ~ U(0, 1) per set and draw."""
        x, z = x.repeat(repeats, 1, 1), z.repeat(repeats, 1, 1)
        t = torch.rand(x.shape[0], device=x.device)
        x_t, target = flow_target(x, torch.randn_like(x), t[:, None, None])
        return F.mse_loss(self(x_t, t, z), target)


@dataclass
class FlowARConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(AEConfig()))  # the frozen autoencoder
    scales: tuple = (1, 2, 4, 7)  # side of each scale's token map, coarse to fine; the last is the latent grid
    head: str = "scale"  # "scale": FlowAR's joint head over a whole scale; "token": one token at a time
    head_width: int = 128  # width of the flow head
    head_depth: int = 2  # its AdaLN blocks (and attention layers, for the joint head)
    head_repeats: int = 4  # noise draws per set and transformer pass during training


class ScaleModel(OnTokenizer, nn.Module):
    """What FlowAR and xAR share: the continuous tokenizer, the scales, a transformer, the class embedding."""

    def _setup(self, config, max_len: int, pos: str):
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(AEConfig(**config.tokenizer), ContinuousAE)
        self.token_dim, self.scales = self.tokenizer.config.latent_dim, tuple(config.scales)
        if self.scales[-1] != self.grid or list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must rise strictly to the token grid {self.grid}, got {self.scales}")
        self.sizes = [s * s for s in self.scales]
        cfg = TransformerConfig(config.n_layer, config.n_head, config.n_embd, max_len, pos, config.dropout)
        self.transformer = Transformer(cfg)
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.level_emb = nn.Parameter(0.02 * torch.randn(len(self.scales), config.n_embd))
        self.token_in = nn.Linear(self.token_dim, config.n_embd)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) or tokens (B, g, g, D) -> checked tokens (B, g, g, D)."""
        size = self.tokenizer.config.image_size
        if x.dim() == 4 and tuple(x.shape[1:]) == (1, size, size):
            return self.tokenizer.encode(x)
        return self.tokenizer.check_tokens(x)

    def pyramid(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, g, g, D) -> every scale's map (B, s, s, D), by the area resize VAR uses."""
        grid = tokens.permute(0, 3, 1, 2)  # (B, D, g, g)
        return [area_resize(grid, s).permute(0, 2, 3, 1) for s in self.scales]

    @staticmethod
    def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
        """A scale's map (B, s, s, D) -> (B, size, size, D), bilinear."""
        up = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False)
        return up.permute(0, 2, 3, 1)

    def labels_for(self, batch):
        """A training batch's labels, or None for an unconditional model or a batch of images alone."""
        return batch[1] if isinstance(batch, (list, tuple)) and self.n_classes else None

    def start_sampling(self, n: int, labels, flow_steps, temperature: float, cfg_scale: float):
        """What both samplers check and set up first: (step counts per scale, labels, whether the rows are doubled
        for guidance, rows, device)."""
        check_sampling_args(temperature, cfg_scale=cfg_scale)
        counts = steps_per_scale(flow_steps, len(self.scales))
        labels, doubled = self.class_emb.sampling_labels(n, labels, cfg_scale)
        return counts, labels, doubled, 2 * n if doubled else n, self.level_emb.device

    def finish(self, maps, paths, return_tokens: bool, return_trace: bool, passes: int, head_passes: int):
        """What sample returns from the generated scales `maps` (and each one's flow `paths`): the last scale's
        tokens or images, and the trace."""
        out = maps[-1] if return_tokens else self.tokenizer.decode(maps[-1])
        if not return_trace:
            return out
        frames = torch.stack([self.tokenizer.decode(self.upsample(m, self.grid)).cpu() for m in maps])
        paths = [torch.stack(p).cpu() for p in paths]  # per scale (steps + 1, n, s^2, D)
        trace = {"maps": [m.cpu() for m in maps], "frames": frames, "paths": paths, "passes": passes}
        return out, {**trace, "head_passes": head_passes}


class FlowAR(ScaleModel):
    """Block-causal transformer over [class | scale 2 | ... | scale K] (each scale's input: the scale below it,
    upsampled); its output over block k conditions a flow head that generates scale k's tokens."""

    Config = FlowARConfig

    def __init__(self, config: FlowARConfig):
        super().__init__()
        if config.head not in ("scale", "token"):
            raise ValueError(f"head must be 'scale' or 'token', got {config.head!r}")
        self._setup(config, max_len=sum(s * s for s in config.scales), pos="learned")
        self.seq_len = sum(self.sizes)
        self.head = FlowHead(
            self.token_dim, config.n_embd, config.head_width, config.head_depth, config.head == "scale", self.seq_len
        )
        self.register_buffer("mask", block_causal_mask(self.sizes), persistent=False)  # (T, T)

    def inputs(self, coarser: list[torch.Tensor], labels, rows: int) -> torch.Tensor:
        """The transformer's inputs (rows, T_k, C) for the given coarser scales: the class token for scale 1, then
        each coarser map upsampled to the next scale's size, with its level embedding."""
        parts = [self.class_emb(labels, batch=rows)[:, None] + self.level_emb[0]]  # (rows, 1, C)
        for k, x in enumerate(coarser, start=1):
            up = self.upsample(x, self.scales[k]).flatten(1, 2)  # (rows, s_k^2, D)
            parts.append(self.token_in(up) + self.level_emb[k])
        return torch.cat(parts, 1)

    def loss(self, batch) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        maps = self.pyramid(self.to_tokens(x))
        z = self.transformer(self.inputs(maps[:-1], self.labels_for(batch), len(x)), mask=self.mask)
        losses = [  # one flow-matching loss per scale, weighted by its tokens
            self.head.loss(m.flatten(1, 2), z_k, self.config.head_repeats) * m.shape[1] ** 2
            for m, z_k in zip(maps, z.split(self.sizes, dim=1))
        ]
        return sum(losses) / self.seq_len

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        flow_steps: int | tuple = 25,
        method: str = "euler",
        temperature: float = 1.0,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images scale by scale: one cached transformer pass per scale, then `flow_steps` steps (or
        one count per scale) of the flow head from noise (times `temperature`) to that scale's tokens, guided on the
        velocity. return_trace=True also returns {"maps": every scale's tokens, "frames": images decoded from each
        scale upsampled, "paths": each scale's states (steps + 1, n, s^2, D), noise first, "passes": transformer
        passes, "head_passes": sequential head calls}."""
        counts, labels, doubled, rows, device = self.start_sampling(n, labels, flow_steps, temperature, cfg_scale)
        maps, paths = [], []
        with eval_mode(self):
            cache = self.transformer.new_cache(rows)
            for k in progress_bar(range(len(self.scales)), progress, desc="FlowAR scales"):
                coarser = [torch.cat([m, m]) if doubled else m for m in maps]
                x_in = self.inputs(coarser, labels, rows)[:, -self.sizes[k] :]  # only scale k's block is new
                z = self.transformer(x_in, mask=self.mask, cache=cache)  # (rows, s_k^2, C)
                velocity = self.velocity(z, n, cfg_scale if doubled else None)
                noise = draw_noise((n, self.sizes[k], self.token_dim), temperature, generator, device)
                path = [] if return_trace else None
                tokens = integrate(velocity, noise, counts[k], method, path)  # (n, s_k^2, D)
                maps.append(tokens.view(n, self.scales[k], self.scales[k], self.token_dim))
                paths.append(path)
        calls = sum(head_calls(c, method) for c in counts)
        return self.finish(maps, paths, return_tokens, return_trace, len(self.scales), calls)

    def velocity(self, z: torch.Tensor, n: int, cfg_scale: float | None):
        """The head's velocity for the n images conditioned on z[:n], guided against z[n:] when cfg_scale is set."""
        velocity = lambda x, t: self.head(x, torch.full((len(x),), t, device=x.device), z)
        return velocity if cfg_scale is None else guided(velocity, n, cfg_scale)


@dataclass
class XARConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(AEConfig()))  # the frozen autoencoder
    scales: tuple = (1, 2, 4, 7)  # the entities: each scale's token map, coarse to fine
    noisy_context: bool = True  # train on noised earlier entities (xAR's noisy context learning), else clean ones


class XAR(ScaleModel):
    """The transformer is the flow network: it reads [class | earlier entities | the noisy entity] and returns the
    entity's velocity. Training runs every entity at once, each at its own noise level, in a layout
    [class | context 1 .. K-1 | query 1 .. K]: query k attends the class, contexts < k and itself; with
    noisy_context a context entity is its query's noisy copy, else the clean entity. Generation keeps the class
    and the finished entities in the KV cache and runs one pass per flow step over the entity being drawn."""

    Config = XARConfig

    def __init__(self, config: XARConfig):
        super().__init__()
        scales = tuple(config.scales)
        sizes = [s * s for s in scales]
        self.n_context = sum(sizes[:-1])
        self._setup(config, max_len=1 + self.n_context + sum(sizes), pos="none")  # positions: our embeddings
        self.seq_len = sum(self.sizes)
        C = config.n_embd
        self.place_emb = nn.Parameter(0.02 * torch.randn(self.seq_len, C))  # where in which scale a token sits
        self.stream_emb = nn.Parameter(0.02 * torch.randn(2, C))  # a context token or a query token
        self.time_mlp = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.out = nn.Linear(C, self.token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        K = len(self.scales)
        block = torch.repeat_interleave(torch.arange(K), torch.tensor(self.sizes))  # (L,) entity of each token
        # training layout [class | contexts 1..K-1 | queries 1..K]: (role, entity) of every position
        role = torch.cat([torch.zeros(1), torch.ones(self.n_context), 2 * torch.ones(self.seq_len)]).long()
        ent = torch.cat([torch.zeros(1, dtype=torch.long), block[: self.n_context], block])
        cls_, ctx, qry = role == 0, role == 1, role == 2
        allowed = cls_[None, :].expand(len(role), -1).clone()  # everyone sees the class token
        allowed |= ctx[:, None] & ctx[None, :] & (ent[None, :] <= ent[:, None])  # contexts: block-causal
        allowed |= qry[:, None] & ctx[None, :] & (ent[None, :] < ent[:, None])  # a query sees earlier contexts
        allowed |= qry[:, None] & qry[None, :] & (ent[None, :] == ent[:, None])  # and its own entity
        self.register_buffer("train_mask", allowed, persistent=False)
        # generation: [class | finished entities | the entity being drawn], block-causal
        self.register_buffer("sample_mask", block_causal_mask([1, *self.sizes]), persistent=False)

    def embed(self, tokens: torch.Tensor, t: torch.Tensor, k0: int, k1: int, stream: int) -> torch.Tensor:
        """Tokens (B, N, D) of entities k0..k1-1 at noise levels t (B, N) -> transformer inputs (B, N, C)."""
        start, end = sum(self.sizes[:k0]), sum(self.sizes[:k1])
        levels = torch.repeat_interleave(torch.arange(k0, k1, device=t.device), torch.tensor(self.sizes[k0:k1]))
        time = self.time_mlp(timestep_embedding(1000 * t.flatten(), self.config.n_embd)).view(*t.shape, -1)
        place = self.place_emb[start:end] + self.level_emb[levels] + self.stream_emb[stream]  # (N, C)
        return self.token_in(tokens) + place + time

    def loss(self, batch) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        maps = self.pyramid(self.to_tokens(x))
        clean = torch.cat([m.flatten(1, 2) for m in maps], 1)  # (B, L, D)
        B, K = len(clean), len(self.scales)
        levels = torch.repeat_interleave(torch.arange(K, device=clean.device), torch.tensor(self.sizes))
        t = torch.rand(B, K, device=clean.device)[:, levels]  # (B, L): one noise level per entity and image
        noisy, target = flow_target(clean, torch.randn_like(clean), t[..., None])
        context = noisy if self.config.noisy_context else clean  # what query k sees of the entities before it
        t_context = t if self.config.noisy_context else torch.zeros_like(t)
        return F.mse_loss(self(context, t_context, noisy, t, self.labels_for(batch)), target)

    def forward(self, context, t_context, noisy, t, labels=None) -> torch.Tensor:
        """Velocities (B, L, D) of every entity at once in the training layout: context and noisy tokens (B, L, D)
        with their levels t_context, t (B, L) (the last entity's context is never seen)."""
        n_ctx, K = self.n_context, len(self.scales)
        start = self.class_emb(labels, batch=len(noisy))[:, None]  # (B, 1, C)
        contexts = self.embed(context[:, :n_ctx], t_context[:, :n_ctx], 0, K - 1, 0)  # (B, n_ctx, C)
        h = self.transformer(torch.cat([start, contexts, self.embed(noisy, t, 0, K, 1)], 1), mask=self.train_mask)
        return self.out(h[:, 1 + n_ctx :])  # (B, L, D)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        flow_steps: int | tuple = 25,
        method: str = "euler",
        temperature: float = 1.0,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images entity by entity: the class and finished entities stay in the KV cache; each of
        `flow_steps` steps (or one count per entity; Heun: about twice the passes) is one transformer pass over the
        entity being drawn, from noise (times `temperature`) to tokens, guided on the velocity. Returns like
        FlowAR.sample."""
        counts, labels, doubled, rows, device = self.start_sampling(n, labels, flow_steps, temperature, cfg_scale)
        maps, paths, passes = [], [], 1
        with eval_mode(self):
            cache = self.transformer.new_cache(rows)
            self.transformer(self.class_emb(labels, batch=rows)[:, None], mask=self.sample_mask, cache=cache)
            for k in progress_bar(range(len(self.scales)), progress, desc="xAR entities"):
                prefix, size = cache.length, self.sizes[k]

                def pass_over(x, t, k=k, prefix=prefix):  # one transformer pass: the velocity of entity k
                    nonlocal passes
                    passes += 1
                    cache.truncate(prefix)
                    inputs = self.embed(x, torch.full(x.shape[:2], t, device=device), k, k + 1, 1)
                    return self.out(self.transformer(inputs, mask=self.sample_mask, cache=cache))  # (rows, s_k^2, D)

                noise = draw_noise((n, size, self.token_dim), temperature, generator, device)
                velocity = guided(pass_over, n, cfg_scale) if doubled else pass_over
                path = [] if return_trace else None
                tokens = integrate(velocity, noise, counts[k], method, path)  # (n, s_k^2, D)
                maps.append(tokens.view(n, self.scales[k], self.scales[k], self.token_dim))
                paths.append(path)
                if k + 1 < len(self.scales):  # the finished entity becomes context: clean, at level 0
                    cache.truncate(prefix)
                    ctx = torch.cat([tokens, tokens]) if doubled else tokens
                    inputs = self.embed(ctx, torch.zeros(ctx.shape[:2], device=device), k, k + 1, 0)
                    self.transformer(inputs, mask=self.sample_mask, cache=cache)
                    passes += 1
        return self.finish(maps, paths, return_tokens, return_trace, passes, 0)


def draw_noise(shape, temperature: float, generator, device) -> torch.Tensor:
    """Gaussian noise of `shape` times `temperature`, drawn on the generator's device, moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return temperature * torch.randn(shape, generator=generator, device=gen_device).to(device)


# FlowAR: MAR's presets (notebook 06), so that the two compare at one budget, with a two-block head at the cpu
# preset (its blocks also attend across the scale, so two keep the parameter count at MAR's)
PRESETS = {**MAR_PRESETS, "cpu": {**MAR_PRESETS["cpu"], "config": {**MAR_PRESETS["cpu"]["config"], "head_depth": 2}}}
XAR_PRESETS = {  # xAR has no head: a wider or deeper transformer spends the same parameters
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=6, n_head=4, n_embd=128), steps=3000, batch_size=32, lr=2e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=10, n_head=8, n_embd=256), steps=12000, batch_size=128, lr=1e-3, ema=0.9995),
}
DATA = dict(name="mnist-subset")
