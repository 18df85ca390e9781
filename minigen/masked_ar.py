"""Masked AR: MaskGIT (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer").

A bidirectional transformer learns to fill in randomly masked VQ tokens. Decoding starts from an all-masked
grid and, in T steps, samples every masked token, keeps the most confident ones and re-masks the rest:
AR over a random order of *sets* of tokens, with T (e.g. 8) passes instead of 49.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen import token_ar
from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, eval_mode, progress_bar
from minigen.sampling import cfg_mix, check_sampling_args, sample_from_probs, warp_logits
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import OnTokenizer, VQConfig

SCHEDULES = {  # fraction of tokens still masked after a fraction r of the decoding steps
    "cosine": lambda r: math.cos(math.pi / 2 * r),
    "linear": lambda r: 1.0 - r,
}


def masked_count(n_tokens: int, step: int, num_iter: int, schedule: str = "cosine") -> int:
    """Tokens the schedule leaves masked after decoding pass `step` (0-based) of num_iter."""
    return int(math.floor(n_tokens * SCHEDULES[schedule]((step + 1) / num_iter) + 1e-9))


def masked_schedule(n_tokens: int, num_iter: int, schedule: str = "cosine") -> list[int]:
    """Tokens still masked after each of num_iter passes that start from n_tokens masked: the schedule's count,
    but at least one token revealed per pass and none left after the last (what `MaskGIT.sample` decodes)."""
    counts, before = [], n_tokens
    for t in range(num_iter):
        before = 0 if t == num_iter - 1 else max(min(masked_count(n_tokens, t, num_iter, schedule), before - 1), 0)
        counts.append(before)
    return counts


@dataclass
class MaskGITConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(VQConfig()))  # the frozen VQ-VAE's config
    label_smoothing: float = 0.1  # on the masked-token cross-entropy, as in MaskGIT


class MaskGIT(OnTokenizer, nn.Module):
    """A bidirectional transformer over [class token, 49 tokens] where some tokens are [MASK]."""

    Config = MaskGITConfig

    def __init__(self, config: MaskGITConfig):
        super().__init__()
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(VQConfig(**config.tokenizer))
        self.mask_id = self.vocab_size  # one extra input id; never predicted
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
        self.token_emb = nn.Embedding(self.vocab_size + 1, config.n_embd)
        self.head = nn.Linear(config.n_embd, self.vocab_size)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)  # start from the uniform distribution over codes
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, L) with mask_id where masked -> logits (B, L, V) over the codes, every position
        seeing every other (full attention)."""
        start = self.class_emb(labels, batch=tokens.shape[0]).unsqueeze(1)  # (B, 1, C)
        x = torch.cat([start, self.token_emb(tokens)], dim=1)  # (B, L + 1, C)
        return self.head(self.transformer(x, mask="full")[:, 1:])  # (B, L, V)

    def random_mask(self, batch: int, device) -> torch.Tensor:
        """(B, L) bool: for each row, r ~ U(0, 1) and ceil(cos(pi r / 2) * L) >= 1 random positions masked."""
        r = torch.rand(batch, 1, device=device)
        n_masked = torch.ceil(torch.cos(math.pi / 2 * r) * self.seq_len).clamp(min=1)  # (B, 1)
        ranks = torch.rand(batch, self.seq_len, device=device).argsort(1).argsort(1)  # (B, L) random permutation
        return ranks < n_masked

    def masked_loss(
        self, tokens: torch.Tensor, mask: torch.Tensor, labels=None, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy at the masked positions only, mean over them. The network sees `tokens` with the
        masked ones replaced by [MASK]; `targets` (default: tokens) matter only where mask is True."""
        targets = tokens if targets is None else targets
        inputs = torch.where(mask, torch.full_like(tokens, self.mask_id), tokens)  # (B, L)
        logits = self(inputs, labels)  # (B, L, V)
        return F.cross_entropy(logits[mask], targets[mask], label_smoothing=self.config.label_smoothing)

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
        num_iter: int = 8,
        schedule: str = "cosine",
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images (n, 1, H, W) in `num_iter` parallel decoding passes.

        Each pass samples every masked token (temperature, top-k/p, CFG), scores it by its (unwarped)
        log-probability plus Gumbel noise scaled by choice_temperature * (1 - t/num_iter), keeps the most
        confident and leaves masked_schedule(L, num_iter)[t] tokens masked (at least one new token per pass).
        return_trace=True also returns {"masked": count after each pass, "fixed_at": (n, g, g) pass that
        fixed each token, "tokens": (num_iter, n, g, g) with -1 for masked, "frames", "passes"}.
        """
        if not isinstance(num_iter, int) or not 1 <= num_iter <= self.seq_len:
            raise ValueError(f"num_iter must be an integer in [1, {self.seq_len}], got {num_iter!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        if not (isinstance(choice_temperature, (int, float)) and choice_temperature >= 0):
            raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature!r}")
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        device = next(self.parameters()).device
        labels, guided = self.class_emb.sampling_labels(n, labels, cfg_scale)
        with eval_mode(self):
            L = self.seq_len
            tokens = torch.full((n, L), self.mask_id, dtype=torch.long, device=device)  # (n, L)
            fixed_at = torch.full((n, L), -1, dtype=torch.long, device=device)
            masked_counts, snapshots = [], []
            schedule_counts = masked_schedule(L, num_iter, schedule)  # masked after each pass
            for t in progress_bar(range(num_iter), progress, desc="MaskGIT passes"):
                masked = tokens == self.mask_id  # (n, L)
                logits = self(torch.cat([tokens, tokens]) if guided else tokens, labels)  # (rows, L, V)
                if guided:
                    logits = cfg_mix(logits[:n], logits[n:], cfg_scale)  # (n, L, V)
                probs = warp_logits(logits, temperature, top_k, top_p)  # (n, L, V)
                sampled = sample_from_probs(probs, generator)  # (n, L)
                # confidence is the model's own log-probability of the draw, before temperature / top-k warping
                confidence = logits.float().log_softmax(-1).gather(-1, sampled[..., None])[..., 0]  # (n, L)
                anneal = choice_temperature * (1 - (t + 1) / num_iter)
                if anneal > 0:
                    u = torch.rand(n, L, generator=generator, device=generator.device if generator else device)
                    confidence = confidence + anneal * -torch.log(-torch.log(u.to(device).clamp(1e-20, 1 - 1e-7)))
                confidence = confidence.masked_fill(~masked, float("inf"))  # fixed tokens are never re-masked
                keep_masked = schedule_counts[t]  # the same in every row
                ranks = confidence.argsort(1).argsort(1)  # (n, L): 0 = least confident
                remask = ranks < keep_masked  # the least confident masked tokens stay masked
                newly = masked & ~remask  # (n, L)
                tokens = torch.where(newly, sampled, tokens)
                fixed_at = torch.where(newly, torch.full_like(fixed_at, t), fixed_at)
                masked_counts.append(keep_masked)
                if return_trace:
                    snapshots.append(torch.where(tokens == self.mask_id, -1, tokens).cpu())
        grid = tokens.view(n, self.grid, self.grid)
        out = grid if return_tokens else self.tokenizer.decode(grid)
        if not return_trace:
            return out
        frames = torch.stack([self.canvas(s) for s in snapshots])  # (num_iter, n, 1, H, W)
        return out, {
            "masked": masked_counts,
            "fixed_at": fixed_at.view(n, self.grid, self.grid).cpu(),
            "tokens": torch.stack(snapshots).view(num_iter, n, self.grid, self.grid),
            "frames": frames,
            "passes": num_iter,
        }


PRESETS, DATA = token_ar.PRESETS, token_ar.DATA  # the raster GPT's sizes: notebook 05 compares the two
TOKENIZER = "vq"
