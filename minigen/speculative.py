"""Speculative decoding: cheap guesses, one parallel check by the target, a rule that keeps its distribution.

Leviathan et al. 2023 and Chen et al. 2023 (speculative sampling). A small draft model guesses gamma tokens from
its distribution q; one target pass scores them all; guess x is kept with probability min(1, p(x)/q(x)), and at
the first rejection the next token is drawn from norm(max(0, p - q)): the output is distributed exactly as the
target p. This file holds that rule (`verify`, `residual`), the incremental `Decoder` every sampler drives, exact
speculative sampling and its cost model; the variants built on the same rule (speculative Jacobi decoding,
LANTERN, multi-draft) are in minigen.speculative_variants.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minigen.nn import eval_mode
from minigen.raster import RasterGPT
from minigen.sampling import cfg_mix, check_sampling_args, sample_from_probs, warp_logits

# the draft model is a much smaller TokenGPT on the target's tokenizer (`python -m minigen train draft`)
DRAFT_PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=16), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=1, n_head=2, n_embd=64), steps=2000, batch_size=32, lr=2e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=2, n_head=4, n_embd=128), steps=4000, batch_size=128, lr=1e-3, ema=0.999),
}
TOKENIZER = "vq"
__all__ = [
    "Dice",
    "Decoder",
    "make_decoder",
    "Verdict",
    "Trace",
    "verify",
    "residual",
    "commit",
    "target_pass",
    "draft_tokens",
    "speculative_sample",
    "expected_tokens_per_pass",
    "expected_rounds",
    "predicted_speedup",
    "DRAFT_PRESETS",
]


class Dice:
    """Every random decision of the samplers: coin flips and categorical draws from one generator.
    The exactness tests replace it by a Dice that walks through every outcome with its probability."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def coin(self, prob: torch.Tensor) -> torch.Tensor:
        """True with probability prob, elementwise."""
        device = self.generator.device if self.generator is not None else prob.device
        return torch.rand(prob.shape, generator=self.generator, device=device).to(prob.device) < prob

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        """One index per row of probs (..., V)."""
        return sample_from_probs(probs, self.generator)


class Decoder:
    """Next-token distributions of a RasterGPT for `rows` sequences, fed a few tokens at a time: the
    incremental form of RasterGPT.sample_tokens that drafting and verification need.

    `feed(tokens)` appends tokens (rows, k) and returns the warped distribution of the token after each,
    (rows, k, V); the first call also runs the class token and returns k + 1 of them. `truncate(n)` forgets
    all but the first n generated tokens (speculative decoding's rollback); `reorder(index)` copies rows.
    Guidance (an unconditional copy of every row, logits mixed), temperature, top-k and top-p are applied
    here, so every sampler that uses a Decoder warps alike. With use_cache=False each feed recomputes the
    whole prefix instead of reading the KV cache (same distributions, the reference for the cache);
    compile=True runs every pass compiled on a static cache (see RasterGPT.sample_tokens).
    """

    def __init__(
        self,
        model: RasterGPT,
        rows: int,
        labels=None,
        *,
        temperature=1.0,
        top_k=None,
        top_p=None,
        cfg_scale=1.0,
        use_cache: bool = True,
        compile: bool = False,
    ):
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        self.model, self.rows = model, rows
        self.labels, self.guided = model.class_emb.sampling_labels(rows, labels, cfg_scale)
        self.warp = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.cfg_scale = cfg_scale
        self.seq_len, self.vocab_size = model.seq_len, model.vocab_size
        batch = 2 * rows if self.guided else rows
        if compile and not use_cache:
            raise ValueError("compile=True needs use_cache=True: it compiles the cached pass")
        self.cache = model.transformer.new_cache(batch, compile=compile) if use_cache else None
        self.seen = torch.zeros(batch, 0, dtype=torch.long, device=model.head.weight.device)  # without a cache
        self.started = False
        self.dtype = torch.float64 if model.head.weight.dtype == torch.float64 else torch.float32  # of the output
        self.passes = 0

    @property
    def device(self) -> torch.device:
        return self.seen.device

    @property
    def length(self) -> int:
        """Generated tokens the decoder has seen (the class token not counted)."""
        return max(self.cache.length - 1, 0) if self.cache is not None else self.seen.shape[1]

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.started and tokens.shape[1] == 0:
            raise ValueError("feed needs at least one token after the first call")
        if self.guided:
            tokens = torch.cat([tokens, tokens])  # conditional rows, then unconditional ones
        new = tokens.shape[1] + (0 if self.started else 1)  # positions whose outputs are returned
        if self.cache is None:  # recompute the whole prefix
            self.seen = torch.cat([self.seen, tokens], 1)
            hidden = self.model.transformer(self.model.embed(self.seen, self.labels), mask="causal")
        else:
            emb = self.model.token_emb(tokens) if self.started else self.model.embed(tokens, self.labels)
            hidden = self.model.transformer(emb, mask="causal", cache=self.cache)
        logits = self.model.head(hidden[:, -new:])  # (rows', new, V)
        if self.guided:
            logits = cfg_mix(logits[: self.rows], logits[self.rows :], self.cfg_scale)  # (rows, new, V)
        self.started, self.passes = True, self.passes + 1
        return warp_logits(logits, **self.warp)  # (rows, new, V)

    def truncate(self, length: int):
        if self.cache is None:
            self.seen = self.seen[:, :length]
        else:
            self.cache.truncate(min(self.cache.length, length + 1))

    def reorder(self, index: torch.Tensor):
        index = torch.cat([index, index + self.rows]) if self.guided else index
        if self.cache is None:
            self.seen = self.seen[index]
        else:
            self.cache.reorder(index)


def make_decoder(model, rows: int, labels, sampling: dict, compile: bool = False):
    """A Decoder over a RasterGPT (the samplers run it in eval mode: dropout would make p differ from pass
    to pass), compiled or not. The exactness tests pass probability tables that bring a decoder with the
    same interface."""
    if isinstance(model, RasterGPT):
        return Decoder(model, rows, labels, **sampling, compile=compile)
    return model.decoder(rows, labels, **sampling)


# --- the one verification step -------------------------------------------------------


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last axis: what is left of p once q's guesses have been accepted.
    Where p == q nothing is left and nothing is ever rejected; p is returned to keep the rows valid."""
    left = (p - q).clamp(min=0)
    mass = left.sum(-1, keepdim=True)
    return torch.where(mass > 0, left / mass.clamp(min=torch.finfo(p.dtype).tiny), p)


class Verdict(NamedTuple):
    """What verify decided for B rows of g guesses."""

    accepted: torch.Tensor  # (B,) guesses kept before the first rejection
    next_token: torch.Tensor  # (B,) the correction (or bonus token) after them; -1 where the sequence is complete
    tested: torch.Tensor  # (B, g) bool: the accept/reject decisions that counted
    alpha: torch.Tensor  # (B, g) sum_x min(p, q): the probability each guess had of being kept


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, dice: Dice, p_at_drafts=None) -> Verdict:
    """Speculative verification of rows of g guesses.

    p (B, g + 1, V): the target's distributions at the g guessed positions and the one after (or (B, g, V)
    at the end of the sequence: no bonus token); q (B, g, V): the distributions the guesses were drawn from;
    drafts (B, g). Guess i is kept with probability min(1, p_i(x_i) / q_i(x_i)) (p_at_drafts replaces
    p_i(x_i) in relaxed acceptance). Returns a Verdict: next_token is drawn from norm(max(0, p - q)) at the
    first rejection, or from p[:, g] when all g were kept (-1 where there is no position left).
    """
    B, g = drafts.shape
    q_x = q.gather(-1, drafts[..., None])[..., 0]  # (B, g)
    p_x = p[:, :g].gather(-1, drafts[..., None])[..., 0] if p_at_drafts is None else p_at_drafts  # (B, g)
    kept = dice.coin((p_x / q_x).clamp(max=1.0))  # (B, g)
    accepted = kept.long().cumprod(1).sum(1)  # (B,) guesses kept before the first rejection
    rows = torch.arange(B, device=p.device)
    at = accepted.clamp(max=g - 1)
    dist = residual(p[rows, at], q[rows, at])  # (B, V)
    has_bonus = p.shape[1] > g
    if has_bonus:
        dist = torch.where((accepted == g)[:, None], p[rows, g], dist)
    nxt = dice.categorical(dist)  # (B,)
    if not has_bonus:
        nxt = torch.where(accepted == g, torch.full_like(nxt, -1), nxt)
    tested = torch.arange(g, device=p.device)[None] <= accepted[:, None]  # (B, g)
    alpha = torch.minimum(p[:, :g], q).sum(-1)  # (B, g)
    return Verdict(accepted, nxt, tested, alpha)


class Trace:
    """What a speculative sampler did: per round the guesses and the kept ones; per token its origin
    (a kept guess, a correction drawn where a guess was rejected, or a bonus token after all were kept)."""

    def __init__(self, n: int, seq_len: int):
        self.rounds, self.guessed, self.kept = 0, [], []
        self.round_of = torch.zeros(n, seq_len, dtype=torch.long)  # round that produced each token
        self.origin = torch.zeros(n, seq_len, dtype=torch.long)  # 0 kept guess, 1 correction, 2 bonus
        self.tested_kept, self.tested_alpha = [], []  # every accept/reject decision, and its probability

    def record(self, start: int, guessed: int, m: int, from_guess_row, tested, accepted, alpha):
        tested, accepted, alpha = tested.cpu(), accepted.cpu(), alpha.cpu()
        self.guessed.append(guessed)
        self.kept.append(m)
        end = min(start + m + 1, self.origin.shape[1])
        self.round_of[:, start:end] = self.rounds
        self.origin[:, start:end] = torch.where(from_guess_row[:, : end - start].cpu(), 0, 1 if m < guessed else 2)
        positions = torch.arange(tested.shape[1])[None]
        self.tested_kept.append((positions < accepted[:, None])[tested])
        self.tested_alpha.append(alpha[tested].float())
        self.rounds += 1

    def as_dict(self, target_passes: int, draft_passes: int) -> dict:
        kept, alpha = torch.cat(self.tested_kept), torch.cat(self.tested_alpha)
        return {
            "rounds": self.rounds,
            "guessed": self.guessed,
            "kept": self.kept,
            "target_passes": target_passes,
            "draft_passes": draft_passes,
            "from_guess": self.origin == 0,
            "round_of": self.round_of,
            "origin": self.origin,
            "acceptance": kept.float().mean().item() if kept.numel() else float("nan"),
            "alpha": alpha.mean().item() if alpha.numel() else float("nan"),
            "tested_kept": kept,
            "tested_alpha": alpha,
        }


# --- the cost model: tokens per target pass, rounds, speed-up --------------------------


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma+1)) / (1 - alpha): tokens per target pass when every guess is kept with probability alpha."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_rounds(alpha: float, gamma: int, length: int) -> float:
    """Expected rounds to draw `length` tokens when each guess is kept with probability alpha: a round keeps k < g
    guesses and adds a correction (probability alpha^k (1 - alpha)), or keeps all g and adds a bonus token
    (alpha^g), with g = min(gamma, tokens still missing) and no bonus past the end. For long sequences
    length / expected_rounds tends to expected_tokens_per_pass; for short ones the truncated last rounds lower it."""
    rounds = [0.0] * (length + 1)  # rounds[n]: expected rounds to finish with n tokens missing
    for n in range(1, length + 1):
        g = min(gamma, n)
        rounds[n] = 1.0 + sum(alpha**k * (1 - alpha) * rounds[n - min(k + 1, n)] for k in range(g))
        rounds[n] += alpha**g * rounds[n - min(g + 1, n)]
    return rounds[length]


def predicted_speedup(alpha: float, gamma: int, c: float, verify: float = 1.0, length: int | None = None) -> float:
    """Speculative sampling's speed-up over plain decoding: tokens per round over the cost of a round, counted in
    plain target passes: gamma draft passes of c each and one target pass over gamma + 1 positions, which costs
    `verify` (1 on the flat part of the decoding roofline, where more positions cost nothing). Tokens per round
    are expected_tokens_per_pass, or, for a sequence of `length` tokens, length / expected_rounds."""
    if length is None:
        per_round = expected_tokens_per_pass(alpha, gamma)
    else:
        per_round = length / expected_rounds(alpha, gamma, length)
    return per_round / (gamma * c + verify)


# --- exact speculative sampling ------------------------------------------------------


def commit(tokens, guesses, accepted, nxt):
    """All rows advance by the fewest kept guesses m (a row that kept more keeps its guess m as the next
    token); the token after the kept guesses is the correction or bonus. Returns (tokens, m, from_guess)."""
    m = int(accepted.min())
    new = guesses[:, :m]
    if m < guesses.shape[1] or bool((nxt >= 0).all()):
        follow = nxt if m == guesses.shape[1] else torch.where(accepted == m, nxt, guesses[:, m])  # (B,)
        new = torch.cat([new, follow[:, None]], 1)
    from_guess = torch.cat(
        [torch.ones_like(guesses[:, :m], dtype=torch.bool), (accepted > m)[:, None]], 1
    )  # (B, m + 1)
    return torch.cat([tokens, new], 1), m, from_guess


def target_pass(target, tokens, guesses):
    """One target pass over the tokens it has not seen plus the guesses; returns p at the guessed positions
    and the one after, (B, g + 1, V), or (B, g, V) when the last guess ends the sequence."""
    n0, g = tokens.shape[1], guesses.shape[1]
    end = min(n0 + g, target.seq_len - 1)  # the last token of a sequence is never fed
    out = target.feed(torch.cat([tokens, guesses], 1)[:, target.length : end])  # (B, k, V)
    return out[:, -(end - n0 + 1) :]


def draft_tokens(draft, tokens, g: int, dice: Dice):
    """g guesses (B, g) from the draft model, one pass each, and the distributions they were drawn from (B, g, V)."""
    probs = draft.feed(tokens[:, draft.length :])[:, -1]  # (B, V)
    guesses, qs = [], []
    for i in range(g):
        x = dice.categorical(probs)  # (B,)
        guesses.append(x)
        qs.append(probs)
        if i < g - 1:
            probs = draft.feed(x[:, None])[:, -1]
    return torch.stack(guesses, 1), torch.stack(qs, 1)


@torch.no_grad()
def speculative_sample(
    target,
    draft,
    n: int = 1,
    labels=None,
    *,
    gamma: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    dice: Dice | None = None,
    relax=None,
    compile: bool = False,
):
    """Exact speculative sampling: the draft guesses gamma tokens, one target pass checks them all.

    Returns (tokens (n, L), trace). The tokens are distributed exactly as target.sample_tokens with the
    same temperature / top-k / top-p / guidance, which apply to target and draft alike. Rows of a batch
    advance together by the fewest kept guesses (still exact; at n = 1 it is the textbook algorithm).
    relax, a function (p (n, g, V), guesses (n, g), q (n, g, V)) -> (n, g), replaces p at the guesses in the
    acceptance test: LANTERN's and GSD's relaxed acceptance (minigen.speculative_variants); None keeps it exact.
    compile=True runs the passes of both models compiled (see RasterGPT.sample_tokens), the same tokens for the
    same generator.
    """
    if not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    with eval_mode(target, draft):
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
        tgt, drf = make_decoder(target, n, labels, sampling, compile), make_decoder(draft, n, labels, sampling, compile)
        if (tgt.seq_len, tgt.vocab_size) != (drf.seq_len, drf.vocab_size):
            raise ValueError(
                f"target and draft disagree on (seq_len, vocab): {(tgt.seq_len, tgt.vocab_size)} "
                f"vs {(drf.seq_len, drf.vocab_size)}"
            )
        dice = dice or Dice(generator)
        tokens = torch.zeros(n, 0, dtype=torch.long, device=tgt.device)
        trace = Trace(n, tgt.seq_len)
        while tokens.shape[1] < tgt.seq_len:
            n0, g = tokens.shape[1], min(gamma, tgt.seq_len - tokens.shape[1])
            guesses, q = draft_tokens(drf, tokens, g, dice)  # (n, g), (n, g, V)
            p = target_pass(tgt, tokens, guesses)  # (n, g + 1, V)
            p_at = None if relax is None else relax(p[:, :g], guesses, q)  # (n, g)
            accepted, nxt, tested, alpha = verify(p, q, guesses, dice, p_at)
            tokens, m, from_guess = commit(tokens, guesses, accepted, nxt)
            tgt.truncate(n0 + m)  # the kept guesses were fed with the right prefix: their cache entries stay
            drf.truncate(n0 + m)
            trace.record(n0, g, m, from_guess, tested, accepted, alpha)
        return tokens, trace.as_dict(tgt.passes, drf.passes)
