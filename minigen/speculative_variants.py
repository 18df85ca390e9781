"""Variants of speculative decoding, each built on the exact rule of minigen.speculative.

Teng et al. 2024 (speculative Jacobi decoding, SJD: no draft model, the target guesses for itself); Jang et al.
2024 (LANTERN: relaxed acceptance that lets latent look-alikes pass, within a total-variation budget); So et al.
2025 (GSD: a guess is judged by the target's mass on a group of look-alikes); Miao et al.
2023 (SpecInfer) / Sun et al. 2023 (SpecTr) / Yang et al. 2024 (multi-draft: several guesses per position,
recursive rejection sampling). Jacobi and multi-draft stay exact; LANTERN and GSD knowingly bend the target.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from minigen.nn import eval_mode
from minigen.speculative import (
    Dice,
    Trace,
    commit,
    draft_tokens,
    make_decoder,
    residual,
    speculative_sample,
    target_pass,
    verify,
)

__all__ = [
    "jacobi_sample",
    "lantern_sample",
    "gsd_sample",
    "token_groups",
    "grouped_acceptance",
    "multi_draft_sample",
    "codebook_neighbours",
    "relaxed_distribution",
    "verify_candidates",
    "CandidateVerdict",
]


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
            p = target_pass(tgt, tokens, guesses)  # (n, g + 1, V)
            accepted, nxt, tested, alpha = verify(p, q, guesses, dice)
            tokens, m, from_guess = commit(tokens, guesses, accepted, nxt)
            tgt.truncate(n0 + m)
            trace.record(n0, g, m, from_guess, tested, accepted, alpha)
            # guesses after the committed ones are redrawn from this pass (conditioned on stale guesses: still a
            # valid q, because they are drawn from it)
            rest = p[:, m + 1 : g]  # (n, g - m - 1, V)
            guesses = dice.categorical(rest) if rest.shape[1] else tokens[:, :0]
            q = rest
        return tokens, trace.as_dict(tgt.passes, 0)


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
    neighbours = _checked_neighbours(neighbours, target, neighbours_k)
    relax = lambda p, guesses, q: relaxed_distribution(p, guesses, neighbours, delta).gather(-1, guesses[..., None])[
        ..., 0
    ]
    return speculative_sample(target, draft, n, labels, relax=relax, **kwargs)


def _checked_neighbours(neighbours, target, k: int) -> torch.Tensor:
    """Code ids (V, k) of each code's nearest codes, by default from the target tokenizer's codebook; checked."""
    if neighbours is None:
        neighbours = codebook_neighbours(target.tokenizer.quantizer.codebook.weight, k)
    neighbours, V = torch.as_tensor(neighbours), target.vocab_size
    if neighbours.dim() != 2 or neighbours.shape[0] != V or neighbours.dtype.is_floating_point:
        raise ValueError(
            f"neighbours must be integer code ids of shape ({V}, k), got {tuple(neighbours.shape)} {neighbours.dtype}"
        )
    if neighbours.numel() and (int(neighbours.min()) < 0 or int(neighbours.max()) >= V):
        raise ValueError(
            f"neighbours must hold code ids in [0, {V}), got min {int(neighbours.min())}, max {int(neighbours.max())}"
        )
    return neighbours


# --- grouped acceptance (GSD) ------------------------------------------------------------


def token_groups(p: torch.Tensor, tokens: torch.Tensor, neighbours: torch.Tensor, p_window: float):
    """GSD's group of each guessed token x: x itself and those of its nearest codes y whose target probability
    is close to x's, |p(y) - p(x)| < p_window. p (..., V), tokens (...) -> (ids (..., k + 1), in_group (..., k + 1)),
    x first."""
    if not 0 <= p_window <= 1:
        raise ValueError(f"p_window must lie in [0, 1], got {p_window}")
    ids = torch.cat([tokens[..., None], neighbours.to(p.device)[tokens]], -1)  # (..., k + 1)
    p_ids = p.gather(-1, ids)  # (..., k + 1)
    close = (p_ids - p_ids[..., :1]).abs() < p_window  # (..., k + 1)
    return ids, torch.cat([torch.ones_like(close[..., :1]), close[..., 1:]], -1)  # x is always in its own group


def grouped_acceptance(p, q, tokens, neighbours, p_window: float = 0.15) -> torch.Tensor:
    """The acceptance probability of GSD for guesses x drawn from q: min(1, p(G) / q(G)) with G = token_groups(x);
    a token the target rules out, p(x) = 0, is never kept (grouping may bend p, not widen its support).
    p, q (..., V), tokens (...) -> (...). With groups of one token it is the exact rule's min(1, p(x) / q(x))."""
    ids, in_group = token_groups(p, tokens, neighbours, p_window)
    p_group = (p.gather(-1, ids) * in_group).sum(-1)  # (...)
    q_group = (q.gather(-1, ids) * in_group).sum(-1)  # (...) >= q(x) > 0: x was drawn from q
    allowed = p.gather(-1, tokens[..., None])[..., 0] > 0
    return (p_group / q_group).clamp(max=1.0) * allowed


@torch.no_grad()
def gsd_sample(
    target,
    draft,
    n: int = 1,
    labels=None,
    *,
    p_window: float = 0.15,
    neighbours_k: int = 8,
    neighbours: torch.Tensor | None = None,
    **kwargs,
):
    """Speculative sampling with grouped acceptance (GSD, So et al. 2025): a guess x is kept with probability
    min(1, p(G)/q(G)), the target's and the draft's mass on a group G of codes that look like x (its nearest
    codebook neighbours, as LANTERN's) and that the target rates about as likely as x (within p_window). A
    rejection draws from the ordinary residual norm(max(0, p - q)). Faster, not exact; p_window = 0 (or groups
    of one) is speculative_sample. neighbours (V, k) defaults to the target tokenizer's codebook."""
    neighbours = _checked_neighbours(neighbours, target, neighbours_k)
    relax = lambda p, guesses, q: (
        grouped_acceptance(p, q, guesses, neighbours, p_window) * q.gather(-1, guesses[..., None])[..., 0]
    )  # verify keeps x with min(1, relax / q(x)): that is the grouped rule
    return speculative_sample(target, draft, n, labels, relax=relax, **kwargs)


# --- multi-draft: k guesses per position, recursive rejection sampling -----------------


class CandidateVerdict(NamedTuple):
    """What verify_candidates decided for one image's drafts."""

    row: int  # a draft row consistent with everything kept
    accepted: int  # guesses kept
    next_token: int  # the correction or bonus token after them; -1 where the sequence is complete
    tested: torch.Tensor  # (g,) bool
    alpha: torch.Tensor  # (g,)


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
            p = target_pass(tgt, rows, guesses)  # (n k, g + 1, V)
            keep_row, accepted, nxt, tested, alpha = zip(
                *[verify_candidates(p, q, guesses, list(range(b * k, (b + 1) * k)), dice) for b in range(n)]
            )
            keep_row = torch.tensor(keep_row, device=rows.device)
            chosen = guesses[keep_row]  # (n, g): the guesses of a surviving draft of every image
            accepted, nxt = torch.tensor(accepted, device=rows.device), torch.tensor(nxt, device=rows.device)
            prefix, m, from_guess = commit(rows[::k], chosen, accepted, nxt)
            index = keep_row.repeat_interleave(k)  # every draft row continues from the surviving one
            for dec in (tgt, drf):
                dec.reorder(index)
                dec.truncate(n0 + m)
            rows = prefix.repeat_interleave(k, 0)
            trace.record(n0, g, m, from_guess, torch.stack(tested), accepted, torch.stack(alpha))
        return rows[::k], trace.as_dict(tgt.passes, drf.passes)
