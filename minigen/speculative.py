"""Speculative decoding: cheap guesses, one parallel check by the target, a rule that keeps its distribution.

Leviathan et al. 2023 and Chen et al. 2023 (speculative sampling); Teng et al. 2024 (speculative Jacobi
decoding, SJD); Jang et al. 2024 (LANTERN, relaxed acceptance); Yang et al. 2024 / Sun et al. 2023
(multi-draft, SpecTr). Every variant guesses tokens from a known distribution q, keeps guess x with
probability min(1, p(x)/q(x)) and at the first rejection draws from norm(max(0, p - q)): the output is
distributed exactly as the target p (LANTERN knowingly bends p, within a total-variation budget).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minigen.nn import cfg_mix, check_sampling_args, eval_mode, sample_from_probs, warp_logits
from minigen.pixel_ar import RasterGPT

# the draft model is a much smaller TokenGPT on the target's tokenizer (`python -m minigen train draft`)
DRAFT_PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=16), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=1, n_head=2, n_embd=64), steps=2000, batch_size=32, lr=2e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=2, n_head=4, n_embd=128), steps=4000, batch_size=128, lr=1e-3, ema=0.999),
}
TOKENIZER = "vq"
__all__ = [
    "Dice",
    "Verdict",
    "CandidateVerdict",
    "verify",
    "verify_candidates",
    "residual",
    "speculative_sample",
    "jacobi_sample",
    "lantern_sample",
    "multi_draft_sample",
    "codebook_neighbours",
    "relaxed_distribution",
    "expected_tokens_per_pass",
    "predicted_speedup",
    "expected_rounds",
    "Decoder",
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


class CandidateVerdict(NamedTuple):
    """What verify_candidates decided for one image's drafts."""

    row: int  # a draft row consistent with everything kept
    accepted: int  # guesses kept
    next_token: int  # the correction or bonus token after them; -1 where the sequence is complete
    tested: torch.Tensor  # (g,) bool
    alpha: torch.Tensor  # (g,)


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


def _commit(tokens, guesses, accepted, nxt):
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


def _target_pass(target, tokens, guesses):
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
    relax = (neighbours, delta) turns on LANTERN's relaxed acceptance (see lantern_sample). compile=True
    runs the passes of both models compiled (see RasterGPT.sample_tokens), the same tokens for the same generator.
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
            p = _target_pass(tgt, tokens, guesses)  # (n, g + 1, V)
            p_at = (
                None
                if relax is None
                else relaxed_distribution(p[:, :g], guesses, *relax).gather(-1, guesses[..., None])[..., 0]
            )
            accepted, nxt, tested, alpha = verify(p, q, guesses, dice, p_at)
            tokens, m, from_guess = _commit(tokens, guesses, accepted, nxt)
            tgt.truncate(n0 + m)  # the kept guesses were fed with the right prefix: their cache entries stay
            drf.truncate(n0 + m)
            trace.record(n0, g, m, from_guess, tested, accepted, alpha)
        return tokens, trace.as_dict(tgt.passes, drf.passes)


# --- relaxed acceptance (LANTERN) ----------------------------------------------------


def codebook_neighbours(codebook: torch.Tensor, k: int) -> torch.Tensor:
    """Codebook vectors (V, D) -> the k nearest other codes of every code (V, k), nearest first."""
    if codebook.dim() != 2 or not 1 <= k < codebook.shape[0]:
        raise ValueError(f"need a (V, D) codebook and 1 <= k < V, got {tuple(codebook.shape)} and k={k}")
    dist = torch.cdist(codebook.float(), codebook.float())  # (V, V)
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=1, largest=False).indices  # (V, k)


def relaxed_distribution(p: torch.Tensor, tokens: torch.Tensor, neighbours: torch.Tensor, delta: float):
    """LANTERN's relaxed target for a guessed token x: p with the mass of x's nearest codes moved onto x,
    nearest first, as long as the moved mass stays <= delta. p (..., V), tokens (...) -> p~ (..., V);
    TV(p~, p) = moved mass <= delta, and delta = 0 gives p back. A token the (warped) target rules out,
    p(x) = 0 (e.g. outside its top-k), gets nothing: relaxation may bend p, never widen its support."""
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must lie in [0, 1], got {delta}")
    near = neighbours.to(p.device)[tokens]  # (..., k)
    near_mass = p.gather(-1, near)  # (..., k)
    allowed = p.gather(-1, tokens[..., None]) > 0  # (..., 1)
    take = (near_mass.cumsum(-1) <= delta) & allowed  # a prefix: the cumulative mass only grows
    moved = (near_mass * take).sum(-1, keepdim=True)  # (..., 1)
    relaxed = p.scatter(-1, near, near_mass * ~take)  # neighbours that were taken lose their mass
    return relaxed.scatter_add(-1, tokens[..., None], moved)


@torch.no_grad()
def lantern_sample(
    target,
    draft,
    n: int = 1,
    labels=None,
    *,
    delta: float = 0.1,
    neighbours_k: int = 8,
    neighbours: torch.Tensor | None = None,
    **kwargs,
):
    """Speculative sampling with relaxed acceptance (LANTERN): a guess x is kept with probability
    min(1, p~(x)/q(x)), where p~ has moved up to delta of probability from x's k nearest codebook
    neighbours (latent look-alikes) onto x. Faster, no longer exact; delta = 0 is speculative_sample.
    On rejection the correction comes from the target's own residual norm(max(0, p - q)).
    neighbours (V, k) defaults to the target tokenizer's codebook."""
    if neighbours is None:
        neighbours = codebook_neighbours(target.tokenizer.quantizer.codebook.weight, neighbours_k)
    neighbours = torch.as_tensor(neighbours)
    V = target.vocab_size
    if neighbours.dim() != 2 or neighbours.shape[0] != V or neighbours.dtype.is_floating_point:
        raise ValueError(
            f"neighbours must be integer code ids of shape ({V}, k), got {tuple(neighbours.shape)} {neighbours.dtype}"
        )
    if neighbours.numel() and (int(neighbours.min()) < 0 or int(neighbours.max()) >= V):
        raise ValueError(
            f"neighbours must hold code ids in [0, {V}), got min {int(neighbours.min())}, max {int(neighbours.max())}"
        )
    return speculative_sample(target, draft, n, labels, relax=(neighbours, delta), **kwargs)


# --- speculative Jacobi decoding --------------------------------------------------------


def _initial_guess(init: str, seq, pos: int, grid: int, vocab: int, dice: Dice, dtype: torch.dtype):
    """A guess for position pos from the sequence so far (committed + guessed) and the q it came from."""
    B = seq.shape[0]
    source = {"left": pos - 1, "above": pos - grid}.get(init, -1)
    if init != "random" and source >= 0:
        x = seq[:, source]
        return x, torch.nn.functional.one_hot(x, vocab).to(dtype)  # a copy: q is a point mass
    uniform = torch.full((B, vocab), 1.0 / vocab, dtype=dtype, device=seq.device)
    return dice.categorical(uniform), uniform


@torch.no_grad()
def jacobi_sample(
    target,
    n: int = 1,
    labels=None,
    *,
    window: int = 8,
    init: str = "random",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    dice: Dice | None = None,
    compile: bool = False,
):
    """Speculative Jacobi decoding (exact, no draft model): keep a window of guessed tokens after the
    committed ones; each target pass scores the whole window, verifies it left to right with the same
    rule, and redraws the guesses after the first rejection from that pass's p (which becomes their q).
    New window positions start from `init`: "random" (q uniform), "left" or "above" (copy a neighbour,
    q a point mass). Returns (tokens (n, L), trace)."""
    if init not in ("random", "left", "above"):
        raise ValueError(f"init must be 'random', 'left' or 'above', got {init!r}")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    with eval_mode(target):
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
        tgt = make_decoder(target, n, labels, sampling, compile)
        L, V = tgt.seq_len, tgt.vocab_size
        grid = int(round(L**0.5))
        dice = dice or Dice(generator)
        tokens = torch.zeros(n, 0, dtype=torch.long, device=tgt.device)
        guesses, q = tokens.clone(), torch.zeros(n, 0, V, dtype=tgt.dtype, device=tgt.device)  # (n, w), (n, w, V)
        trace = Trace(n, L)
        while tokens.shape[1] < L:
            n0, g = tokens.shape[1], min(window, L - tokens.shape[1])
            while guesses.shape[1] < g:  # top up the window
                x, qx = _initial_guess(
                    init, torch.cat([tokens, guesses], 1), n0 + guesses.shape[1], grid, V, dice, tgt.dtype
                )
                guesses = torch.cat([guesses, x[:, None]], 1)
                q = torch.cat([q, qx[:, None]], 1)
            p = _target_pass(tgt, tokens, guesses)  # (n, g + 1, V)
            accepted, nxt, tested, alpha = verify(p, q, guesses, dice)
            tokens, m, from_guess = _commit(tokens, guesses, accepted, nxt)
            tgt.truncate(n0 + m)
            trace.record(n0, g, m, from_guess, tested, accepted, alpha)
            # guesses after the committed ones are redrawn from this pass (conditioned on stale guesses: still a
            # valid q, because they are drawn from it)
            rest = p[:, m + 1 : g]  # (n, g - m - 1, V)
            guesses = dice.categorical(rest) if rest.shape[1] else tokens[:, :0]
            q = rest
        return tokens, trace.as_dict(tgt.passes, 0)


# --- multi-draft: k guesses per position, recursive rejection sampling -----------------


def verify_candidates(p, q, guesses, alive: list, dice: Dice) -> CandidateVerdict:
    """Verify one image's drafts (rows `alive` of guesses (R, g), p (R, g + 1, V), q (R, g, V)) position by
    position: the candidates still consistent with the kept prefix share p and q there and are tried in turn,
    candidate j kept with probability min(1, r_j(x)/q(x)), r_1 = p, r_(j+1) = norm(max(0, r_j - q)).
    Returns a CandidateVerdict."""
    g = guesses.shape[1]
    depth, follow = 0, -1
    tested, alpha = torch.zeros(g, dtype=torch.bool), torch.zeros(g)
    while depth < g:
        r, qd = p[alive[0], depth], q[alive[0], depth]
        tested[depth], alpha[depth] = True, torch.minimum(r, qd).sum()
        kept = None
        for j in alive:
            x = guesses[j, depth]
            if bool(dice.coin((r[x] / qd[x]).clamp(max=1.0))):
                kept = x
                break
            r = residual(r, qd)
        if kept is None:  # every candidate rejected: the correction comes from what is left of p
            return CandidateVerdict(alive[0], depth, int(dice.categorical(r)), tested, alpha)
        alive = [j for j in alive if guesses[j, depth] == kept]
        depth += 1
    if p.shape[1] > g:  # all kept: a bonus token, unless the sequence is complete
        follow = int(dice.categorical(p[alive[0], g]))
    return CandidateVerdict(alive[0], depth, follow, tested, alpha)


@torch.no_grad()
def multi_draft_sample(
    target,
    draft,
    n: int = 1,
    labels=None,
    *,
    drafts: int = 3,
    gamma: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    generator: torch.Generator | None = None,
    dice: Dice | None = None,
    compile: bool = False,
):
    """Exact multi-draft speculative sampling: the draft proposes `drafts` independent sequences of gamma
    tokens; one target pass scores them all (as drafts x n rows); verify_candidates applies recursive
    rejection sampling to each image's drafts. Returns (tokens (n, L), trace)."""
    if not isinstance(drafts, int) or drafts < 1 or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"drafts and gamma must be positive integers, got {drafts!r}, {gamma!r}")
    k = drafts
    row_labels = None if labels is None else torch.as_tensor(labels).reshape(-1).repeat_interleave(k)
    if row_labels is not None and row_labels.numel() != n * k:
        raise ValueError(f"labels has {row_labels.numel() // k} entries for {n} images (one label per image)")
    with eval_mode(target, draft):
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)
        tgt = make_decoder(target, n * k, row_labels, sampling, compile)
        drf = make_decoder(draft, n * k, row_labels, sampling, compile)
        dice = dice or Dice(generator)
        rows = torch.zeros(n * k, 0, dtype=torch.long, device=tgt.device)  # every draft row holds the prefix
        trace = Trace(n, tgt.seq_len)
        while rows.shape[1] < tgt.seq_len:
            n0, g = rows.shape[1], min(gamma, tgt.seq_len - rows.shape[1])
            guesses, q = draft_tokens(drf, rows, g, dice)  # (n k, g), (n k, g, V)
            p = _target_pass(tgt, rows, guesses)  # (n k, g + 1, V)
            keep_row, accepted, nxt, tested, alpha = zip(
                *[verify_candidates(p, q, guesses, list(range(b * k, (b + 1) * k)), dice) for b in range(n)]
            )
            keep_row = torch.tensor(keep_row, device=rows.device)
            chosen = guesses[keep_row]  # (n, g): the guesses of a surviving draft of every image
            accepted, nxt = torch.tensor(accepted, device=rows.device), torch.tensor(nxt, device=rows.device)
            prefix, m, from_guess = _commit(rows[::k], chosen, accepted, nxt)
            index = keep_row.repeat_interleave(k)  # every draft row continues from the surviving one
            for dec in (tgt, drf):
                dec.reorder(index)
                dec.truncate(n0 + m)
            rows = prefix.repeat_interleave(k, 0)
            trace.record(n0, g, m, from_guess, torch.stack(tested), accepted, torch.stack(alpha))
        return rows[::k], trace.as_dict(tgt.passes, drf.passes)
