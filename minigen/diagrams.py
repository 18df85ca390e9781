"""Architecture sketches for the notebooks: VAR's next-scale prediction, MAR's diffusion head, and one round of
speculative decoding drawn from a real round's numbers.

Plain matplotlib (patches, arrows, text) on an axis measured in inches, so sizes and gaps read as they print.
Each function returns its Figure; the patches carry a gid naming what they stand for, which the tests count.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import FancyBboxPatch, Rectangle

from minigen.masked_ar import masked_count
from minigen.nn import block_causal_mask, eval_mode
from minigen.speculative import Dice, draft_tokens, make_decoder, target_pass, verify

TOKENIZER, NETWORK, HEAD = "#dbe9f6", "#fde9c8", "#e1f0d8"
KEPT, CORRECTION, BONUS = "#93d393", "#f7b267", "#9ec5f8"


# --- drawing helpers: boxes, arrows, token grids on an inch-sized canvas ----------------------------------------


def _canvas(width: float, height: float, title: str):
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height), aspect="equal")
    ax.set_axis_off()
    ax.text(0.2, height - 0.25, title, fontsize=12, weight="bold", va="top")
    return fig, ax


def _box(ax, x, y, w, h, text="", color="white", *, fontsize=9, gid=None, hatch=None, **kw):
    box = FancyBboxPatch((x, y), w, h, "round,pad=0,rounding_size=0.06", fc=color, ec="0.3", hatch=hatch, **kw)
    ax.add_patch(box).set_gid(gid)
    ground = dict(fc="white", ec="none", pad=1.5) if hatch else None  # text on a hatched box: on a white ground
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, bbox=ground)


def _arrow(ax, start, end, *, color="0.3", rad=0.0, ls="-"):
    style = dict(arrowstyle="-|>", color=color, lw=1.1, ls=ls, connectionstyle=f"arc3,rad={rad}")
    ax.annotate("", xy=end, xytext=start, arrowprops=style)


def _grid(ax, x, y, n, cell, colors, *, gid=None):
    """An n x n token map with its lower left corner at (x, y); colors (n, n, 3|4)."""
    for i in range(n):
        for j in range(n):
            square = Rectangle((x + j * cell, y + (n - 1 - i) * cell), cell, cell, fc=colors[i, j], ec="0.35", lw=0.5)
            ax.add_patch(square).set_gid(gid)


def _codes(n, rng):
    """Colours of discrete codes: a random pick from a qualitative palette."""
    return plt.get_cmap("tab20")(rng.integers(0, 20, (n, n)))


def _latents(n, rng):
    """Colours of continuous tokens: random shades of one colour map."""
    return plt.get_cmap("viridis")(0.15 + 0.7 * rng.random((n, n)))


def _tokenizer_row(ax, y, encoder: str, width: float, n: int, colors, *, gid=None) -> float:
    """A digit box, an arrow, the encoder, an arrow and the n x n latent grid, bottom at y; returns the grid's x."""
    mid = y + 0.55
    _box(ax, 0.3, y, 1.1, 1.1, "digit\n28×28", "white")
    _arrow(ax, (1.4, mid), (1.8, mid))
    _box(ax, 1.8, y + 0.2, width, 0.7, encoder, TOKENIZER)
    _arrow(ax, (1.8 + width, mid), (2.2 + width, mid))
    _grid(ax, 2.2 + width, y, n, 1.1 / n, colors, gid=gid)
    return 2.2 + width


# --- VAR -----------------------------------------------------------------------------------------------------------


def sketch_var(scales=(1, 2, 3, 4, 5, 7)):
    """VAR (minigen.scale_ar): a multi-scale residual tokenizer, one block-causal transformer pass per scale, and a
    decoder that sums the scales' upsampled contributions."""
    rng, K = np.random.default_rng(0), len(scales)
    tokens = sum(s * s for s in scales)
    fig, ax = _canvas(13, 9.9, "VAR: next-scale prediction (minigen.scale_ar)")
    # (1) the tokenizer
    ax.text(0.2, 9.2, "1 · multi-scale residual tokenizer (frozen)", fontsize=10, weight="bold", color="0.25")
    _tokenizer_row(ax, 7.5, "encoder", 1.0, scales[-1], _latents(scales[-1], rng))
    ax.text(3.75, 7.35, "latent f: 7×7×16", ha="center", va="top", fontsize=8.5)
    x, cell = 4.9, 0.17
    for s in scales:
        _grid(ax, x, 7.5, s, cell, _codes(s, rng), gid="tokenizer map")
        ax.text(x + s * cell / 2, 7.35, f"{s}x{s}", ha="center", va="top", fontsize=9)
        _arrow(ax, (x - 0.5, 7.8), (x - 0.08, 7.8))
        x += s * cell + 0.6
    ax.text(x - 0.3, 7.8, f"= {tokens} codes", va="center", fontsize=9)
    ax.text(4.65, 7.9, "residual", ha="center", fontsize=8)
    ax.text(0.3, 6.9, "scale k: codes = the nearest entries of one codebook (256 codes) to the residual r area-resized "
            "to k's side;  then r ← r − φ_k(upsample(e[codes]))", fontsize=8.5, color="0.2")  # fmt: skip
    # (2) the transformer, unrolled over its passes
    ax.text(0.2, 6.45, "2 · one transformer pass per scale, coarse to fine", fontsize=10, weight="bold", color="0.25")
    step, cell, top = 1.75, 0.15, 4.05  # the input maps hang from `top`
    centres = [1.3 + step * k for k in range(K)]
    for k, (c, s) in enumerate(zip(centres, scales)):
        if k == 0:
            _box(ax, c - 0.32, top - 0.42, 0.64, 0.42, "class", "#f2d0e4", fontsize=8)
            what = "class token"
        else:
            _grid(ax, c - s * cell / 2, top - s * cell, s, cell, _latents(s, rng), gid="input map")
            what = rf"$\hat f_{{<{k + 1}}}$ → {s}x{s}"
        ax.text(c, top - scales[-1] * cell - 0.12, what, ha="center", va="top", fontsize=8.5)
        _arrow(ax, (c, top), (c, 4.35))
        _box(ax, c - 0.6, 4.35, 1.2, 0.45, f"pass {k + 1}", NETWORK, gid="pass")
        _arrow(ax, (c, 4.8), (c, 5.05))
        _grid(ax, c - s * cell / 2, 5.05, s, cell, _codes(s, rng), gid="output map")
        ax.text(c, 5.12 + s * cell, f"scale {k + 1}: {s}x{s} tokens", ha="center", fontsize=8.5)
        if k + 1 < K:
            _arrow(ax, (c + 0.6, 4.57), (centres[k + 1] - 0.6, 4.57), color="C0")
            _arrow(ax, (c + s * cell / 2 + 0.05, 5.2), (centres[k + 1] - scales[k + 1] * cell / 2 - 0.05, top - 0.05),
                   color="0.55", ls="--", rad=-0.25)  # fmt: skip
    ax.text(centres[0] + step / 2, 4.5, "KV cache", ha="center", va="top", fontsize=7.5, color="C0")
    ax.text(0.3, 2.35, "inputs of pass k: the class token, then the sum of the upsampled maps of scales < k, "
            r"$\hat f_{<k}$, area-resized to scale k's side (dashed)", fontsize=8.5, color="0.2")  # fmt: skip
    ax.text(0.3, 2.05, "outputs of pass k: logits of all s_k² tokens of scale k, drawn at once", fontsize=8.5,
            color="0.2")  # fmt: skip
    # the mask
    inset = ax.inset_axes((10.95, 3.3, 1.75, 1.75), transform=ax.transData)
    inset.imshow(block_causal_mask([s * s for s in scales]).numpy(), cmap="Blues", vmin=0, vmax=1.3)
    inset.set_xticks([])
    inset.set_yticks([])
    ax.text(11.82, 5.15, "block-causal mask", ha="center", fontsize=9, weight="bold")
    ax.text(11.82, 3.2, f"{tokens} x {tokens}: scale k's positions\nsee scales ≤ k, all at once", ha="center",
            va="top", fontsize=8)  # fmt: skip
    # (3) the decoder
    ax.text(0.2, 1.55, "3 · decoder: " + r"$\hat f = \sum_k \varphi_k(\mathrm{up}(e[\mathrm{codes}_k]))$",
            fontsize=10, weight="bold", color="0.25")  # fmt: skip
    x = 0.4
    for k, s in enumerate(scales):
        _grid(ax, x, 0.35, scales[-1], 0.1, _latents(scales[-1], rng), gid="upsampled map")
        ax.text(x + 0.35, 0.28, f"up({s}x{s})", ha="center", va="top", fontsize=7.5)
        ax.text(x + 0.85, 0.7, "+" if k + 1 < K else "=", ha="center", va="center", fontsize=12)
        x += 1.05
    _grid(ax, x, 0.35, scales[-1], 0.1, _latents(scales[-1], rng))
    ax.text(x + 0.35, 0.28, r"$\hat f$: 7×7×16", ha="center", va="top", fontsize=8)
    _arrow(ax, (x + 0.8, 0.7), (x + 1.2, 0.7))
    _box(ax, x + 1.2, 0.35, 1.0, 0.7, "decoder", TOKENIZER)
    _arrow(ax, (x + 2.2, 0.7), (x + 2.6, 0.7))
    _box(ax, x + 2.6, 0.2, 1.0, 1.0, "digit\n28×28", "white")
    ax.text(x + 3.8, 0.7, f"{K} passes for {tokens} tokens\n(a raster GPT: 49 passes\nfor 49 tokens)", va="center",
            fontsize=8.5)  # fmt: skip
    return fig


# --- MAR -----------------------------------------------------------------------------------------------------------


def _mar_counts(L: int, num_iter: int) -> list:
    """New tokens per pass, as MAR.sample counts them."""
    counts, done = [], 0
    for k in range(num_iter):
        left = 0 if k == num_iter - 1 else max(1, min(masked_count(L, k, num_iter), L - done - 1))
        counts.append(L - left - done)
        done = L - left
    return counts


def sketch_mar(num_iter: int = 8, shown_pass: int = 4, diffusion_steps: int = 50, grid: int = 7):
    """MAR (minigen.diffusion_ar): continuous tokens from a KL autoencoder, a bidirectional transformer giving a
    condition z per masked position, a small diffusion head drawing each token, passes on a cosine schedule."""
    rng, L = np.random.default_rng(1), grid * grid
    counts = _mar_counts(L, num_iter)
    rank = rng.permutation(L).reshape(grid, grid)  # the random order: a token's place in it
    colours = _latents(grid, rng)
    done = sum(counts[: shown_pass - 1])
    known, new = rank < done, (rank >= done) & (rank < done + counts[shown_pass - 1])
    fig, ax = _canvas(13, 9.0, "MAR: masked AR over continuous tokens with a diffusion head (minigen.diffusion_ar)")
    # (1) the tokenizer
    ax.text(0.2, 8.3, "1 · KL autoencoder (frozen): 49 continuous tokens", fontsize=10, weight="bold", color="0.25")
    _tokenizer_row(ax, 6.7, "KL encoder", 1.5, grid, colours, gid="tokens")
    ax.text(5.0, 7.25, f"{grid}x{grid} = {L} tokens, each a 4-d real vector (unit scale):\nno codebook, so no "
            "softmax can model them; a diffusion head does", va="center", fontsize=9)  # fmt: skip
    # (2) one pass
    ax.text(0.2, 6.15, f"2 · one pass (pass {shown_pass} of {num_iter})", fontsize=10, weight="bold", color="0.25")
    cell, y0 = 0.22, 3.85
    shade = np.where(known[..., None], colours, np.array([0.85, 0.85, 0.85, 1.0]))
    _grid(ax, 0.4, y0, grid, cell, shade)
    for i, j in zip(*np.nonzero(~known)):
        ax.text(0.4 + (j + 0.5) * cell, y0 + (grid - i - 0.5) * cell, "M", ha="center", va="center", fontsize=6,
                color="0.4")  # fmt: skip
    ax.text(0.4 + grid * cell / 2, y0 - 0.12, f"{done} known, {L - done} masked (M)", ha="center", va="top",
            fontsize=8.5)  # fmt: skip
    _arrow(ax, (2.05, y0 + 0.77), (2.45, y0 + 0.77))
    _box(ax, 2.45, 3.55, 2.5, 2.1, "", NETWORK, gid="transformer")
    ax.text(3.7, 5.42, "bidirectional transformer", ha="center", va="top", fontsize=9.5, weight="bold")
    ax.text(3.7, 5.05, "full attention over\n[class, 49 positions];\na masked position enters\nas a learned "
            "[MASK] vector:\nits value never reaches it", ha="center", va="top", fontsize=8.5)  # fmt: skip
    _arrow(ax, (4.95, y0 + 0.77), (5.35, y0 + 0.77))
    z = np.where(new[..., None], np.array([0.99, 0.91, 0.78, 1.0]), np.array([1.0, 1.0, 1.0, 1.0]))
    _grid(ax, 5.35, y0, grid, cell, z)
    for i, j in zip(*np.nonzero(new)):
        ax.text(5.35 + (j + 0.5) * cell, y0 + (grid - i - 0.5) * cell, "z", ha="center", va="center", fontsize=7)
    ax.text(5.35 + grid * cell / 2, y0 - 0.12, f"z at the {counts[shown_pass - 1]} positions\nthis pass fills",
            ha="center", va="top", fontsize=8.5)  # fmt: skip
    _arrow(ax, (6.95, y0 + 0.77), (7.35, y0 + 0.77))
    _box(ax, 7.35, 3.35, 4.0, 2.3, "", HEAD, gid="diffusion head")
    ax.text(9.35, 5.45, "diffusion head, per token", ha="center", va="top", fontsize=9.5, weight="bold")
    ax.text(9.35, 5.1, "a small MLP (AdaLN blocks) predicts the noise ε(x_t, t, z)", ha="center", va="top",
            fontsize=8.5)  # fmt: skip
    clean, noise, steps = np.array([0.7, -0.4, 0.2, -0.8]), rng.normal(0, 0.6, 4), 5
    for k in range(steps):  # one 4-d token as four bars, from noise to clean
        x, mix = 7.65 + k * 0.75, k / (steps - 1)
        _box(ax, x, 3.85, 0.5, 0.6, "", "white", gid="denoising step")
        for d, v in enumerate(((1 - mix) * noise + mix * clean).clip(-1, 1)):
            ax.add_patch(Rectangle((x + 0.06 + d * 0.1, 4.15), 0.08, 0.27 * v, fc="C2" if k == steps - 1 else "0.5"))
        ax.text(x + 0.25, 3.78, "x_S ~ N(0, I)" if k == 0 else "x_0" if k == steps - 1 else "…", ha="center",
                va="top", fontsize=8)  # fmt: skip
        if k + 1 < steps:
            _arrow(ax, (x + 0.52, 4.15), (x + 0.73, 4.15))
    ax.text(9.35, 4.7, f"S = {diffusion_steps} denoising steps (DDPM, cosine schedule)", ha="center", fontsize=8.5)
    _arrow(ax, (11.35, y0 + 0.77), (11.75, y0 + 0.77))
    ax.text(11.8, y0 + 0.77, "new tokens\nwritten into\nthe grid", va="center", fontsize=8.5)
    ax.text(0.4, 2.95, "training: a random 70-100% of the positions masked; the DDPM noise-prediction loss on the "
            "masked tokens only, each conditioned on its own z", fontsize=8.5, color="0.2")  # fmt: skip
    # (3) generation
    ax.text(0.2, 2.45, f"3 · generation: {num_iter} passes over a random order, cosine schedule", fontsize=10,
            weight="bold", color="0.25")  # fmt: skip
    done, cell = 0, 0.1
    for k, count in enumerate(counts):
        done += count
        shade = np.where((rank < done)[..., None], colours, np.array([0.85, 0.85, 0.85, 1.0]))
        _grid(ax, 0.4 + k * 1.0, 0.9, grid, cell, shade, gid="generation step")
        ax.text(0.75 + k * 1.0, 0.8, f"pass {k + 1}\n+{count}", ha="center", va="top", fontsize=8)
    x = 0.4 + num_iter * 1.0
    _arrow(ax, (x - 0.15, 1.25), (x + 0.25, 1.25))
    _box(ax, x + 0.25, 0.9, 1.3, 0.7, "KL decoder", TOKENIZER)
    _arrow(ax, (x + 1.55, 1.25), (x + 1.95, 1.25))
    _box(ax, x + 1.95, 0.75, 1.0, 1.0, "digit\n28×28", "white")
    ax.text(0.4, 1.95, f"{num_iter} transformer passes and {num_iter} x {diffusion_steps} head steps; the head "
            "draws all of a pass's tokens in parallel", fontsize=8.5, color="0.2")  # fmt: skip
    return fig


# --- one round of speculative decoding -------------------------------------------------------------------------------


@torch.no_grad()
def speculative_round(target, draft, labels=None, *, prefix=20, gamma: int = 4, generator=None, **sampling) -> dict:
    """One round of minigen.speculative's sampler for one sequence, run by its own pieces (draft_tokens,
    target_pass, verify), as the arguments of draw_speculative_round. `prefix`: the tokens before the round, or
    how many of a target sample (drawn with the same generator) to take. `sampling`: temperature, top_k, top_p,
    cfg_scale, applied to both models as speculative_sample does."""
    device = target.head.weight.device
    if isinstance(prefix, int):
        tokens = target.sample_tokens(1, labels, generator=generator, **sampling)[0][:, :prefix]
    else:
        tokens = torch.as_tensor(prefix, dtype=torch.long).view(1, -1)
    tokens = tokens.to(device)  # (1, prefix)
    with eval_mode(target, draft):  # dropout off: p must be the distribution speculative_sample would use
        tgt, drf = make_decoder(target, 1, labels, sampling), make_decoder(draft, 1, labels, sampling)
        g = min(gamma, tgt.seq_len - tokens.shape[1])
        if g < 1:
            raise ValueError(f"a prefix of {tokens.shape[1]} tokens leaves nothing to guess (seq_len {tgt.seq_len})")
        dice = Dice(generator)
        guesses, q = draft_tokens(drf, tokens, g, dice)  # (1, g), (1, g, V)
        p = target_pass(tgt, tokens, guesses)  # (1, g + 1, V), or (1, g, V) at the end of the sequence
        kept, nxt, _, _ = verify(p, q, guesses, dice)
    at = guesses[0, :, None]  # (g, 1)
    return dict(
        drafted=guesses[0].tolist(),
        p_probs=p[0, :g].gather(-1, at)[:, 0].tolist(),
        q_probs=q[0].gather(-1, at)[:, 0].tolist(),
        n_kept=int(kept[0]),
        replacement=int(nxt[0]),
        start=tokens.shape[1],
    )


def _at_guesses(probs, drafted) -> np.ndarray:
    """Per-guess probabilities (g,) from (g,) values or distributions (g or g + 1, V)."""
    probs = torch.as_tensor(probs, dtype=torch.float64).cpu()
    if probs.dim() == 2:
        probs = probs[: len(drafted)].gather(-1, torch.as_tensor(drafted).view(-1, 1))[:, 0]
    return probs.numpy()


def draw_speculative_round(drafted, p_probs, q_probs, n_kept: int, replacement: int | None, start: int = 0):
    """One round of speculative decoding, drawn from its numbers: the draft's guesses x_i (one pass each), the
    target's p(x_i) against the draft's q(x_i) from one pass, the test min(1, p/q) until the first rejection, the
    correction drawn from norm(max(0, p - q)) in its place, the later guesses rolled back (their cache entries
    dropped), or a bonus token from p after the last guess when all are kept. p_probs, q_probs: (g,) values at the
    guesses or the distributions (g [+ 1], V); replacement: the correction or bonus token (None or -1: none, at the
    end of the sequence); start: tokens before the round. speculative_round(...) gives all of them."""
    drafted = [int(x) for x in torch.as_tensor(drafted).view(-1).tolist()]
    g = len(drafted)
    p, q = _at_guesses(p_probs, drafted), _at_guesses(q_probs, drafted)
    if not 0 <= n_kept <= g or p.shape != (g,) or q.shape != (g,):
        raise ValueError(f"need 0 <= n_kept <= {g} and one p and one q per guess, got {n_kept}, {p.shape}, {q.shape}")
    has_next = replacement is not None and replacement >= 0
    col, left = 1.6, 2.7  # column width, label margin
    x_of = lambda i: left + i * col  # noqa: E731 (left edge of column i)
    made = n_kept + int(has_next)
    fig, ax = _canvas(left + (g + 1) * col + 0.2, 6.6, f"speculative decoding, one round after {start} tokens")
    ax.text(0.2, 6.0, f"γ = {g} guesses, {n_kept} kept + {'a correction' if n_kept < g else 'a bonus token'} = {made}"
            f" tokens for one target pass and {g} draft passes", fontsize=9.5, color="0.2")  # fmt: skip
    rows = [(4.85, "draft q", f"{g} passes, one guess each"), (3.2, "target p", "one pass over γ + 1 positions"),
            (2.35, "keep?", "with probability min(1, p/q)"), (1.2, "tokens out", f"{made} this round")]  # fmt: skip
    for y, name, what in rows:
        ax.text(0.3, y + 0.3, name, fontsize=10, weight="bold", va="center")
        ax.text(0.3, y + 0.02, what, fontsize=8, va="center", color="0.3")
    for i in range(g + 1):
        ax.text(x_of(i) + col / 2, 5.62, f"position {start + i + 1}", ha="center", fontsize=8, color="0.4")
    _box(ax, x_of(0) - 0.1, 2.8, (g + 1) * col, 1.6, "", NETWORK)  # the one target pass
    ax.text(x_of(0), 4.3, "one target pass scores every guess and the position after them: p(x_i) against the "
            "q(x_i) each was drawn with (bars to the largest)", fontsize=8, va="top", color="0.3")  # fmt: skip
    top = max(p.max(), q.max(), 1e-12)
    for i, x in enumerate(drafted):
        cx, gone = x_of(i) + col / 2, i >= n_kept
        _box(ax, cx - 0.55, 4.85, 1.1, 0.55, f"x{i + 1} = {x}", "white", hatch="///" if gone else None,
             gid="rolled back" if gone else "guess")  # fmt: skip
        if i + 1 < g:
            _arrow(ax, (cx + 0.55, 5.12), (cx + col - 0.55, 5.12))
        for k, (v, name, colour) in enumerate(((p[i], "p", "C1"), (q[i], "q", "C0"))):  # p(x_i), q(x_i) bars
            bx = cx - 0.42 + k * 0.46
            ax.add_patch(Rectangle((bx, 3.12), 0.38, 0.8 * v / top, fc=colour, gid=f"{name} bar"))
            ax.text(bx + 0.19, 3.15 + 0.8 * v / top, f"{v:.2g}", ha="center", va="bottom", fontsize=7.5)
            ax.text(bx + 0.19, 3.08, name, ha="center", va="top", fontsize=8, color=colour)
        ratio = min(1.0, p[i] / q[i]) if q[i] > 0 else 1.0
        if i < n_kept:
            mark, colour, note = "✓", "C2", f"min(1, p/q) = {ratio:.2f}"
        elif i == n_kept:
            mark, colour, note = "✗", "C3", f"min(1, p/q) = {ratio:.2f}"
        else:
            mark, colour, note = "–", "0.6", "not tested"
        ax.text(cx, 2.5, mark, ha="center", va="center", fontsize=15, color=colour, weight="bold")
        ax.text(cx, 2.2, note, ha="center", va="top", fontsize=8, color="0.3")
        if i < n_kept:
            _box(ax, cx - 0.55, 1.2, 1.1, 0.55, f"x{i + 1} = {x}", KEPT, gid="kept")
        elif i == n_kept and has_next:
            _box(ax, cx - 0.65, 1.2, 1.3, 0.55, f"y = {replacement}", CORRECTION, gid="correction")
            ax.text(cx, 1.12, "y ~ norm(max(0, p − q))", ha="center", va="top", fontsize=7.5)
        else:
            _box(ax, cx - 0.55, 1.2, 1.1, 0.55, "rolled back", "white", hatch="///", gid="discarded", alpha=0.6)
        if i < n_kept or i == n_kept and has_next:
            _arrow(ax, (cx, 2.0 if i < n_kept else 1.95), (cx, 1.78), color="0.5")
    cx = x_of(g) + col / 2  # the position after the last guess
    ax.text(cx, 3.5, "p after\nthe last\nguess", ha="center", va="center", fontsize=8, color="0.3")
    if n_kept == g and has_next:
        ax.text(cx, 2.5, "all kept", ha="center", va="center", fontsize=9, color="C2")
        _arrow(ax, (cx, 2.35), (cx, 1.78), color="0.5")
        _box(ax, cx - 0.6, 1.2, 1.2, 0.55, f"b = {replacement}", BONUS, gid="bonus")
        ax.text(cx, 1.12, "bonus b ~ p", ha="center", va="top", fontsize=7.5)
    if n_kept < g:
        ax.text(0.3, 0.35, f"rolled back: guesses {n_kept + 1}..{g} and their cache entries (both models' KV "
                f"caches rewound to {start + n_kept} tokens); the next round starts after the correction",
                fontsize=8.5, color="0.2")  # fmt: skip
    else:
        ax.text(0.3, 0.35, "every guess kept: the target's pass already gave p after the last one, so a bonus token "
                "comes free", fontsize=8.5, color="0.2")  # fmt: skip
    return fig
