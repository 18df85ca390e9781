"""Exact speculative decoding for continuous tokens (after Wang et al. 2024, "Continuous Speculative Decoding for
Autoregressive Image Generation", arXiv 2411.11925), on notebook 06's continuous tokens and diffusion head.

A causal transformer conditions a diffusion head token by token; a much smaller copy drafts gamma tokens and one
target pass scores them. A token's density is intractable, but the density of the denoising path that drew it is a
product of Gaussians: keep the draft's path with probability min(1, p(path) / q(path)), and at the first rejection
draw from norm(max(0, p - q)) by acceptance-rejection. The paper's rule (draft and target share the noise, then
compare their last Gaussian steps) is here too, kept exact, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minigen.diffusion_ar import MAR, DiffusionHead, DiffusionHeadConfig
from minigen.diffusion_ar import PRESETS as MAR_PRESETS
from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, eval_mode, progress_bar
from minigen.sampling import check_sampling_args
from minigen.speculative import Dice, Trace
from minigen.tokenizers import AEConfig, ContinuousAE, OnTokenizer

TOKENIZER = "ae"
DATA = dict(name="mnist-subset")
RULES = ("path", "aligned")

# --- one denoising path, and its density ------------------------------------------------------


def path_schedule(head: DiffusionHead, steps: int):
    """The levels a path visits, high to low: timesteps (S,), alpha_bar there (S,) and at the next level (S,), and
    each step's noise std (S,). Every step, the last included, adds noise of variance beta = 1 - a / a_next (the
    "large" choice of Ho et al., sigma^2 = beta): no step is deterministic, so every path has a density."""
    if not isinstance(steps, int) or not 1 <= steps <= head.n_steps:
        raise ValueError(f"diffusion_steps must be an integer in [1, {head.n_steps}], got {steps!r}")
    t, a, a_next = head.respaced(steps)
    return t, a, a_next, (1 - a / a_next).sqrt()


def step_mean(head: DiffusionHead, x, t, a, a_next, z, z_uncond=None, cfg_scale: float = 1.0) -> torch.Tensor:
    """The mean of one denoising step from x (N, D) at timesteps t (N,) with alpha_bar a and next alpha_bar
    a_next ((N, 1) or scalars), given conditions z (N, C): the posterior mean at the clean token the (guided)
    noise prediction implies, as in DiffusionHead.sample."""
    n = x.shape[0]
    guided = z_uncond is not None and cfg_scale != 1.0
    eps = head(
        torch.cat([x, x]) if guided else x,
        torch.cat([t, t]) if guided else t,
        torch.cat([z, z_uncond]) if guided else z,
    )
    if guided:
        eps = eps[n:] + cfg_scale * (eps[:n] - eps[n:])  # (N, D)
    bound = float(head.x0_bound) if head.x0_bound > 0 else float("inf")
    x0_hat = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-bound, bound)
    beta = 1 - a / a_next
    return (a_next.sqrt() * beta * x0_hat + (1 - beta).sqrt() * (1 - a_next) * x) / (1 - a)  # (N, D)


def draw_path(head: DiffusionHead, z, z_uncond, cfg_scale: float, steps: int, noise: torch.Tensor):
    """Draw tokens along a path from the given standard normal noise (S + 1, N, D): noise[0] is the start, noise[s]
    the s-th step's. Returns the path (S + 1, N, D), whose last entry is the token, and its log density (N,) up to
    the constant every model with this schedule shares (the start's density and the steps' normalisers)."""
    t, a, a_next, std = path_schedule(head, steps)
    x, path = noise[0], [noise[0]]
    for s in range(steps):
        x = step_mean(head, x, t[s].expand(x.shape[0]), a[s], a_next[s], z, z_uncond, cfg_scale) + std[s] * noise[s + 1]
        path.append(x)
    return torch.stack(path), -0.5 * noise[1:].square().sum((0, 2))


def path_log_density(head: DiffusionHead, path: torch.Tensor, z, z_uncond=None, cfg_scale: float = 1.0):
    """log q(path) (N,) under this head and conditions, up to draw_path's shared constant: every step of the
    given paths (S + 1, N, D) at once, in one call of the head over S * N rows."""
    steps, n = path.shape[0] - 1, path.shape[1]
    t, a, a_next, std = path_schedule(head, steps)
    rep = lambda c: None if c is None else c.repeat(steps, 1)  # noqa: E731  (S * N, C): conditions step-major
    mean = step_mean(
        head,
        path[:-1].flatten(0, 1),
        t.repeat_interleave(n),
        a.repeat_interleave(n)[:, None],
        a_next.repeat_interleave(n)[:, None],
        rep(z),
        rep(z_uncond),
        cfg_scale,
    ).view_as(path[1:])  # (S, N, D)
    return -0.5 * ((path[1:] - mean) / std[:, None, None]).square().sum((0, 2))


def last_step_mean(head: DiffusionHead, z, z_uncond, cfg_scale: float, steps: int, noise: torch.Tensor):
    """The paper's shared trajectory: follow this head's path with the given noise (S + 1, N, D) up to the last
    step and return that step's mean (N, D); the token is then mean + std[-1] * noise[-1]."""
    t, a, a_next, std = path_schedule(head, steps)
    x = noise[0]
    for s in range(steps - 1):
        x = step_mean(head, x, t[s].expand(x.shape[0]), a[s], a_next[s], z, z_uncond, cfg_scale) + std[s] * noise[s + 1]
    return step_mean(head, x, t[-1].expand(x.shape[0]), a[-1], a_next[-1], z, z_uncond, cfg_scale)


# --- the causal continuous-token model: target and draft --------------------------------------


@dataclass
class CausalMARConfig(DiffusionHeadConfig):
    """MAR's fields without its mask ratio: every token is predicted, each from the tokens before it."""


class CausalMAR(OnTokenizer, nn.Module):
    """MAR's tokens and diffusion head under a causal transformer: token i is drawn from p(x_i | x_<i, class) by the
    head, conditioned on the transformer's output at the token before (the class token for the first)."""

    Config = CausalMARConfig
    to_tokens = MAR.to_tokens  # the same images-or-tokens checks: (B, L, D)

    def __init__(self, config: CausalMARConfig):
        super().__init__()
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(AEConfig(**config.tokenizer), ContinuousAE)
        self.token_dim = self.tokenizer.config.latent_dim
        self.transformer = Transformer(
            TransformerConfig(config.n_layer, config.n_head, config.n_embd, self.seq_len, "learned", config.dropout)
        )
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.token_in = nn.Linear(self.token_dim, config.n_embd)
        self.head = DiffusionHead(
            self.token_dim, config.n_embd, config.head_width, config.head_depth, config.train_diffusion_steps
        )

    def embed(self, tokens: torch.Tensor, labels=None) -> torch.Tensor:
        """Tokens (B, t, D) -> inputs (B, t + 1, C): the class token, then the tokens."""
        start = self.class_emb(labels, batch=tokens.shape[0]).unsqueeze(1)  # (B, 1, C)
        return torch.cat([start, self.token_in(tokens)], 1)

    def forward(self, tokens: torch.Tensor, labels=None) -> torch.Tensor:
        """Tokens (B, L, D) -> the head's conditions (B, L, C); position i has seen tokens < i only."""
        return self.transformer(self.embed(tokens[:, :-1], labels), mask="causal")

    def loss(self, batch) -> torch.Tensor:
        x, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        tokens = self.to_tokens(x)  # (B, L, D)
        z = self(tokens, labels if self.n_classes else None)  # (B, L, C)
        return self.head.loss(tokens.flatten(0, 1), z.flatten(0, 1), self.config.head_repeats)

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, D) or (B, g, g, D) -> images (B, 1, H, W)."""
        return self.tokenizer.decode(tokens.reshape(tokens.shape[0], self.grid, self.grid, self.token_dim))

    def stream(self, rows: int, labels=None, cfg_scale: float = 1.0) -> Stream:
        return Stream(self, rows, labels, cfg_scale)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        diffusion_steps: int = 50,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images (n, 1, H, W): one cached transformer pass per token, each token drawn by the head
        along a path of `diffusion_steps` Gaussian steps (guided by cfg_scale, constant)."""
        with eval_mode(self):
            stream = self.stream(n, labels, cfg_scale)
            tokens = torch.zeros(n, 0, self.token_dim, device=self.token_in.weight.device)
            for _ in progress_bar(range(self.seq_len), progress, desc="tokens"):
                z, z_u = stream.feed(tokens[:, stream.length :])
                noise = stream.noise(n, diffusion_steps, generator)
                path, _ = draw_path(self.head, z[:, -1], _last(z_u), cfg_scale, diffusion_steps, noise)
                tokens = torch.cat([tokens, path[-1][:, None]], 1)  # (n, t + 1, D)
        return tokens.view(n, self.grid, self.grid, self.token_dim) if return_tokens else self.to_images(tokens)


def _last(z_u):
    return None if z_u is None else z_u[:, -1]


class Stream:
    """The head's conditions for `rows` sequences fed a few tokens at a time, with a KV cache (an unconditional
    copy of every row when guided): `feed(tokens (rows, k, D))` returns the conditions of the position after each
    token, (rows, k, C), and their unconditional twins or None (the first call also runs the class token and
    returns k + 1); `truncate(n)` forgets all but the first n tokens."""

    def __init__(self, model: CausalMAR, rows: int, labels=None, cfg_scale: float = 1.0):
        check_sampling_args(1.0, cfg_scale=cfg_scale)
        self.model, self.rows, self.cfg_scale = model, rows, cfg_scale
        self.labels, self.guided = model.class_emb.sampling_labels(rows, labels, cfg_scale)
        self.cache = model.transformer.new_cache(2 * rows if self.guided else rows)
        self.seq_len, self.token_dim, self.passes = model.seq_len, model.token_dim, 0

    @property
    def length(self) -> int:
        return max(self.cache.length - 1, 0)

    def noise(self, n: int, steps: int, generator=None) -> torch.Tensor:
        """Standard normal noise for n paths, (steps + 1, n, D), from `generator` (on its own device)."""
        device = self.model.token_in.weight.device
        gen_device = generator.device if generator is not None else device
        return torch.randn(steps + 1, n, self.token_dim, generator=generator, device=gen_device).to(device)

    def feed(self, tokens: torch.Tensor):
        started = self.cache.length > 0
        if self.guided:
            tokens = torch.cat([tokens, tokens])  # conditional rows, then unconditional ones
        x = self.model.token_in(tokens) if started else self.model.embed(tokens, self.labels)
        z = self.model.transformer(x, mask="causal", cache=self.cache)  # (rows', k (+1), C)
        self.passes += 1
        return (z[: self.rows], z[self.rows :]) if self.guided else (z, None)

    def truncate(self, length: int):
        self.cache.truncate(min(self.cache.length, length + 1))


# --- speculative sampling over paths -----------------------------------------------------------


def keep_prob(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """min(1, p / q): the probability a draft's draw is kept."""
    return (log_p - log_q).clamp(max=0).exp()


def residual_keep_prob(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - q / p): a draw from p is kept with this probability, so what is kept is distributed as
    norm(max(0, p - q)), the residual (acceptance-rejection with p as proposal and p as envelope)."""
    return (1 - (log_q - log_p).clamp(max=0).exp()).clamp(min=0)


class Proposal:
    """Draws and densities for one position of `rows` sequences under one rule: the draft's conditions
    (z_q, zu_q), the target's (z_p, zu_p) once its pass is done."""

    def __init__(self, rule, target, draft, steps, cfg_scale, z_q, zu_q):
        self.rule, self.target, self.draft, self.steps, self.cfg = rule, target, draft, steps, cfg_scale
        self.z_q, self.zu_q = z_q, zu_q

    def draw_draft(self, noise):
        """The draft's token (N, D) and what the verifier needs: the path (rule "path") or the shared noise."""
        path, log_q = draw_path(self.draft.head, self.z_q, self.zu_q, self.cfg, self.steps, noise)
        self.noise, self.path, self.log_q = noise, path, log_q
        return path[-1]

    def score(self, z_p, zu_p):
        """log p and log q of the draft's draw (N,) each, up to one shared constant."""
        self.z_p, self.zu_p = z_p, zu_p
        if self.rule == "path":
            return path_log_density(self.target.head, self.path, z_p, zu_p, self.cfg), self.log_q
        # given the shared noise, each model's token is Gaussian around its last step's mean
        self.std = path_schedule(self.target.head, self.steps)[3][-1]
        self.mean_p = last_step_mean(self.target.head, z_p, zu_p, self.cfg, self.steps, self.noise)  # (N, D)
        x = self.path[-1]
        self.mean_q = x - self.std * self.noise[-1]  # the draft's last mean, recovered from its draw
        return _gauss(x, self.mean_p, self.std), _gauss(x, self.mean_q, self.std)

    def draw_residual(self, rows: torch.Tensor, noise, dice: Dice):
        """Tokens (len(rows), D) from norm(max(0, p - q)) for the given rows, by acceptance-rejection: draw
        from p, keep with probability max(0, 1 - q / p), repeat where not kept."""
        out = torch.zeros(len(rows), self.path.shape[-1], device=self.path.device)
        todo, tries = torch.arange(len(rows), device=rows.device), 0
        while len(todo):
            r = rows[todo]
            fresh = noise(len(todo))  # (S + 1, k, D)
            if self.rule == "path":
                zu = None if self.zu_p is None else self.zu_p[r]
                path, log_p = draw_path(self.target.head, self.z_p[r], zu, self.cfg, self.steps, fresh)
                zuq = None if self.zu_q is None else self.zu_q[r]
                log_q = path_log_density(self.draft.head, path, self.z_q[r], zuq, self.cfg)
                y = path[-1]
            else:  # the same shared noise, a fresh last step
                y = self.mean_p[r] + self.std * fresh[-1]
                log_p, log_q = _gauss(y, self.mean_p[r], self.std), _gauss(y, self.mean_q[r], self.std)
            kept = dice.coin(residual_keep_prob(log_p, log_q))
            out[todo[kept]] = y[kept]
            todo, tries = todo[~kept], tries + 1
            if tries > 10_000:
                raise RuntimeError("the residual draw kept nothing in 10,000 tries: p and q look identical")
        self.tries = tries
        return out


def _gauss(x, mean, std):
    return -0.5 * ((x - mean) / std).square().sum(-1)


@torch.no_grad()
def continuous_speculative_sample(
    target: CausalMAR,
    draft: CausalMAR,
    n: int = 1,
    labels=None,
    *,
    gamma: int = 4,
    rule: str = "path",
    diffusion_steps: int = 50,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    dice: Dice | None = None,
    return_tokens: bool = False,
):
    """Exact speculative sampling for continuous tokens: returns (images (n, 1, H, W), or tokens (n, g, g, D), and a
    trace as speculative_sample's). The output is distributed exactly as target.sample with the same
    diffusion_steps and cfg_scale. rule "path": a draft token is kept with probability min(1, p(path) / q(path)),
    its whole path scored by the target's head in one call; rule "aligned" (the paper's): the target follows the
    draft's noise up to the last step and compares the two last Gaussian steps. Rows advance together by the
    fewest kept guesses, as in speculative_sample. The trace adds "residual_tries": proposals the residual draws
    made (each a batch of the rejected rows), one per correction when p and q barely overlap."""
    if not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if (target.seq_len, target.token_dim) != (draft.seq_len, draft.token_dim):
        raise ValueError("target and draft must share the tokenizer's grid and token size")
    dice = dice or Dice(generator)
    L = target.seq_len
    with eval_mode(target, draft):
        tgt, drf = target.stream(n, labels, cfg_scale), draft.stream(n, labels, cfg_scale)
        noise = lambda k: tgt.noise(k, diffusion_steps, generator)  # noqa: E731
        tokens = torch.zeros(n, 0, target.token_dim, device=target.token_in.weight.device)
        trace, tries = Trace(n, L), 0
        while tokens.shape[1] < L:
            n0, g = tokens.shape[1], min(gamma, L - tokens.shape[1])
            guesses, props = [], []
            for i in range(g):  # the draft: one cached pass and one path per guess
                fed = tokens[:, drf.length :] if i == 0 else guesses[-1][:, None]
                z, z_u = drf.feed(fed)
                props.append(Proposal(rule, target, draft, diffusion_steps, cfg_scale, z[:, -1], _last(z_u)))
                guesses.append(props[-1].draw_draft(noise(n)))
            guesses_t = torch.stack(guesses, 1)  # (n, g, D)
            end = min(n0 + g, L - 1)  # the last token of a sequence is never fed
            z, z_u = tgt.feed(torch.cat([tokens, guesses_t], 1)[:, tgt.length : end])  # the target: one pass
            z, z_u = z[:, -(end - n0 + 1) :], None if z_u is None else z_u[:, -(end - n0 + 1) :]
            scores = [props[i].score(z[:, i], None if z_u is None else z_u[:, i]) for i in range(g)]
            ratio = torch.stack([keep_prob(lp, lq) for lp, lq in scores], 1)  # (n, g)
            kept = dice.coin(ratio)
            accepted = kept.long().cumprod(1).sum(1)  # (n,)
            m = int(accepted.min())
            new = guesses_t[:, :m]
            if m < g or end == n0 + g:  # a token after the kept guesses: a correction, a bonus or guess m
                if m < g:
                    follow = guesses_t[:, m].clone()
                    rows = (accepted == m).nonzero()[:, 0]
                    follow[rows] = props[m].draw_residual(rows, noise, dice)
                    tries += props[m].tries
                else:  # all kept: the target's own draw at the next position
                    zu = None if z_u is None else z_u[:, g]
                    follow = draw_path(target.head, z[:, g], zu, cfg_scale, diffusion_steps, noise(n))[0][-1]
                new = torch.cat([new, follow[:, None]], 1)
            from_guess = torch.cat([torch.ones(n, m, dtype=torch.bool), (accepted > m)[:, None].cpu()], 1)
            tested = torch.arange(g, device=accepted.device)[None] <= accepted[:, None]
            trace.record(n0, g, m, from_guess, tested, accepted, ratio)
            tokens = torch.cat([tokens, new], 1)
            tgt.truncate(n0 + m)
            drf.truncate(n0 + m)
    out = tokens.view(n, target.grid, target.grid, target.token_dim) if return_tokens else target.to_images(tokens)
    return out, {**trace.as_dict(tgt.passes, drf.passes), "residual_tries": tries}


PRESETS = MAR_PRESETS  # the target: MAR's sizes and training recipe, on the same tokens
SIZES = {  # the draft: one thin block and a thin head (`python -m minigen train cmar_draft`)
    "smoke": dict(n_layer=1, n_head=2, n_embd=16, head_width=16, head_depth=1),
    "cpu": dict(n_layer=1, n_head=2, n_embd=64, head_width=64, head_depth=1),
    "gpu": dict(n_layer=2, n_head=4, n_embd=128, head_width=128, head_depth=2),
}
DRAFT_PRESETS = {
    name: {**recipe, "config": SIZES[name], **({"steps": 6000, "ema": 0.999} if name == "gpu" else {})}
    for name, recipe in MAR_PRESETS.items()
}
