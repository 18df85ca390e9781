"""Next-neighbour AR, NAR (He et al. 2025, arXiv 2503.10696), on notebook 03's VQ tokens.

Generation spreads from the top-left token to its neighbours: pass d draws every token of anti-diagonal d
(row + column = d) at once, 13 passes for a 7x7 grid instead of 49. A transformer reads [class | diagonal 0 |
diagonal 1 | ...] under a block-causal mask over diagonals, and two dimension-oriented heads read each token's
output: one predicts its right neighbour, the other its lower neighbour. The factorisation
p(x | y) = prod_d prod_{i + j = d} p(x_ij | diagonals < d, y) has an exact likelihood, computed in one pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, block_causal_mask, eval_mode, progress_bar
from minigen.sampling import cfg_mix, check_sampling_args, sample_from_probs, warp_logits
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import OnTokenizer, VQConfig

TOKENIZER = "vq"


def diagonal_order(grid: int) -> torch.Tensor:
    """Raster indices (L,) of a grid x grid map in generation order: anti-diagonal by anti-diagonal, each from its
    top row down."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    key = (rows + cols) * grid + rows  # diagonal first, then row
    return key.flatten().argsort()


@dataclass
class NARConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(VQConfig()))  # the frozen VQ-VAE's config


class NAR(OnTokenizer, nn.Module):
    """The transformer over [class | tokens in diagonal order] and its two neighbour heads.

    Token (i, j) is predicted from the outputs of its parents on the diagonal before: the horizontal head at its
    left neighbour (i, j - 1) and the vertical head at its upper neighbour (i - 1, j); where it has both, the mean
    of the two heads' logits. Every parent sees all earlier diagonals, so either head alone, or both, is a
    conditional on exactly what the factorisation allows. Token (0, 0) is predicted from the class token."""

    Config = NARConfig

    def __init__(self, config: NARConfig):
        super().__init__()
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(VQConfig(**config.tokenizer))
        g = self.grid
        self.n_diagonals = 2 * g - 1
        self.sizes = [min(d, 2 * g - 2 - d) + 1 for d in range(self.n_diagonals)]  # tokens per diagonal
        cfg = TransformerConfig(
            config.n_layer, config.n_head, config.n_embd, 1 + self.seq_len, "learned", config.dropout
        )
        self.transformer = Transformer(cfg)
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.token_emb = nn.Embedding(self.vocab_size, config.n_embd)
        self.heads = nn.ModuleDict(
            {"right": nn.Linear(config.n_embd, self.vocab_size), "down": nn.Linear(config.n_embd, self.vocab_size)}
        )
        for head in self.heads.values():  # start from the uniform distribution
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        order = diagonal_order(g)  # (L,): raster index at each sequence place
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("mask", block_causal_mask([1, *self.sizes]), persistent=False)  # (1 + L, 1 + L)
        # for every raster token, the sequence places (class = 0, token k = 1 + its place) of its two parents,
        # -1 where it has none
        place = torch.empty(self.seq_len, dtype=torch.long)
        place[order] = torch.arange(self.seq_len)
        left, up = torch.full((self.seq_len,), -1), torch.full((self.seq_len,), -1)
        for r in range(g):
            for c in range(g):
                k = r * g + c
                left[k] = 0 if k == 0 else (1 + place[k - 1] if c > 0 else -1)
                up[k] = 1 + place[k - g] if r > 0 else -1
        self.register_buffer("left_parent", left.clamp(min=0), persistent=False)
        self.register_buffer("up_parent", up.clamp(min=0), persistent=False)
        # each head's weight in a token's logits: 1 for its only parent, 1/2 each where it has two, 0 for none
        has_left, has_up = (left >= 0).float(), (up >= 0).float()
        self.register_buffer("left_weight", has_left / (has_left + has_up), persistent=False)
        self.register_buffer("up_weight", has_up / (has_left + has_up), persistent=False)

    def logits_from(self, h: torch.Tensor, positions: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Logits (B, N, V) of the raster tokens `positions` (N,) from transformer outputs h (B, T, C) that hold
        sequence places offset .. offset + T - 1: the right head at the left parent, the down head at the upper
        one, their mean where both exist."""
        left = (self.left_parent[positions] - offset).clamp(min=0)  # (N,); a missing parent gets weight 0
        up = (self.up_parent[positions] - offset).clamp(min=0)  # (N,)
        from_left = self.heads["right"](h[:, left])  # (B, N, V)
        from_up = self.heads["down"](h[:, up])  # (B, N, V)
        return self.left_weight[positions, None] * from_left + self.up_weight[positions, None] * from_up

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Token grids (B, L) in raster order -> logits (B, L, V) in raster order; logits of token (i, j) see only
        the diagonals before i + j (and the class)."""
        tokens = self.to_tokens(tokens)
        start = self.class_emb(labels if self.n_classes else None, batch=len(tokens))[:, None]  # (B, 1, C)
        x = torch.cat([start, self.token_emb(tokens[:, self.order])], 1)  # (B, 1 + L, C), diagonal order
        h = self.transformer(x, mask=self.mask)  # (B, 1 + L, C)
        return self.logits_from(h, torch.arange(self.seq_len, device=tokens.device))  # (B, L, V)

    def nll(self, batch) -> torch.Tensor:
        """Exact negative log-likelihood of the factorisation over diagonals, nats per image (B,)."""
        x, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        tokens = self.to_tokens(x)
        logits = self(tokens, labels)  # (B, L, V)
        return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").sum(1)  # (B,)

    def loss(self, batch) -> torch.Tensor:
        return self.nll(batch).mean() / self.seq_len

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels=None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images diagonal by diagonal: 2 * grid - 1 KV-cached passes, each feeding the diagonal just
        drawn and drawing the next one from its outputs. return_trace=True also returns {"frames": the canvas after
        each pass (not yet drawn tokens grey), "tokens", "diagonal": each token's diagonal, "passes"}."""
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        labels, guided = self.class_emb.sampling_labels(n, labels, cfg_scale)
        rows = 2 * n if guided else n
        device = self.token_emb.weight.device
        tokens = torch.full((n, self.seq_len), -1, dtype=torch.long, device=device)  # raster order, -1: not yet
        frames, start = [], 0
        with eval_mode(self):
            cache = self.transformer.new_cache(rows)
            x = self.class_emb(labels, batch=rows)[:, None]  # (rows, 1, C): the first pass reads the class
            for d in progress_bar(range(self.n_diagonals), progress, desc="diagonals"):
                h = self.transformer(x, mask=self.mask, cache=cache)  # (rows, new, C)
                offset = cache.length - h.shape[1]  # sequence place of h[:, 0]
                new = self.order[start : start + self.sizes[d]]  # (s_d,) raster indices of diagonal d
                logits = self.logits_from(h, new, offset)  # (rows, s_d, V)
                if guided:
                    logits = cfg_mix(logits[:n], logits[n:], cfg_scale)  # (n, s_d, V)
                drawn = sample_from_probs(warp_logits(logits, temperature, top_k, top_p), generator)  # (n, s_d)
                tokens[:, new] = drawn
                start += self.sizes[d]
                x = self.token_emb(torch.cat([drawn, drawn]) if guided else drawn)  # (rows, s_d, C): next input
                if return_trace:
                    frames.append(self.canvas(tokens.clone()))
        grids = tokens.view(n, self.grid, self.grid)
        out = grids if return_tokens else self.to_images(tokens)
        if not return_trace:
            return out
        diagonal = (torch.arange(self.grid)[:, None] + torch.arange(self.grid)[None, :]).expand(n, -1, -1)
        return out, {
            "frames": torch.stack(frames),
            "tokens": grids.cpu(),
            "diagonal": diagonal,
            "passes": self.n_diagonals,
        }


PRESETS = {  # the token GPT's (notebook 03), so that the two compare at one budget
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=4, n_head=4, n_embd=128), steps=3000, batch_size=32, lr=1e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=8, n_head=8, n_embd=256), steps=6000, batch_size=128, lr=5e-4, ema=0.999),
}
DATA = dict(name="mnist-subset")
