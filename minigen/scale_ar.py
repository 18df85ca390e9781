"""Scale-level AR: VAR (Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
Next-Scale Prediction"). The AR unit is a whole token map: the codes of scale k (s_k x s_k) are predicted
together from the class and all coarser scales, under block-causal attention: 6 passes for 104 tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen import token_ar
from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, block_causal_mask, eval_mode, progress_bar
from minigen.sampling import cfg_mix, check_sampling_args, sample_logits
from minigen.token_ar import TokenModelConfig
from minigen.tokenizers import MultiScaleVQ, MultiScaleVQConfig, OnTokenizer


@dataclass
class VARConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(MultiScaleVQConfig()))  # frozen tokenizer


class VAR(OnTokenizer, nn.Module):
    """Block-causal transformer over [start | scale 2 | scale 3 | ...] token maps of a MultiScaleVQ."""

    Config = VARConfig

    def __init__(self, config: VARConfig):
        super().__init__()
        vq_config = MultiScaleVQConfig(**config.tokenizer)
        self.config, self.n_classes = config, config.n_classes
        self.attach_tokenizer(vq_config, MultiScaleVQ)
        self.scales = vq_config.scales
        self.block_sizes = [s * s for s in self.scales]
        self.seq_len = sum(self.block_sizes)  # 1 + 4 + 9 + 16 + 25 + 49 = 104 for the default scales
        self.transformer = Transformer(
            TransformerConfig(
                n_layer=config.n_layer,
                n_head=config.n_head,
                n_embd=config.n_embd,
                max_len=self.seq_len,
                pos="learned",
                dropout=config.dropout,
            )
        )
        self.class_emb = ClassEmbedding(config.n_classes, config.n_embd, config.class_drop)
        self.level_emb = nn.Embedding(len(self.scales), config.n_embd)  # which scale a position belongs to
        self.input_proj = nn.Linear(vq_config.latent_dim, config.n_embd)  # f_hat vectors -> token inputs
        self.head = nn.Linear(config.n_embd, self.vocab_size)
        nn.init.normal_(self.level_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mask", block_causal_mask(self.block_sizes), persistent=False)  # (L, L)

    # --- token maps <-> one flat sequence ---
    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) or flat multi-scale codes (B, 104) -> checked flat codes (B, 104)."""
        if x.dtype.is_floating_point:
            return torch.cat([c.flatten(1) for c in self.tokenizer.encode(x)], 1)  # (B, L)
        if x.dim() != 2 or x.shape[1] != self.seq_len:
            raise ValueError(f"expected images or flat multi-scale codes (B, {self.seq_len}), got {tuple(x.shape)}")
        return torch.cat([c.flatten(1) for c in self.split(x)], 1)

    def split(self, flat: torch.Tensor) -> list:
        """Flat codes (B, L) -> checked codes per scale [(B, s, s), ...]."""
        parts = flat.split(self.block_sizes, dim=1)
        return self.tokenizer.check_codes([p.reshape(-1, s, s) for p, s in zip(parts, self.scales)])

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(self.split(tokens))

    # --- the model ---
    def embed_scale(self, k: int, labels, f_hat: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Inputs of scale k: the class token for k = 0, else f_hat (of scales < k) downsampled to s_k."""
        if k == 0:
            x = self.class_emb(labels, batch=batch).unsqueeze(1)  # (B, 1, C)
        else:
            small = self.tokenizer.next_scale_input(f_hat, k)  # (B, D, s_k, s_k)
            x = self.input_proj(small.flatten(2).transpose(1, 2))  # (B, s_k^2, C)
        return x + self.level_emb.weight[k]

    def teacher_inputs(self, codes: list, labels) -> torch.Tensor:
        """Codes per scale (ground truth) -> the inputs of every scale at once (B, L, C)."""
        B, pieces, f_hat = codes[0].shape[0], [], 0
        for k in range(len(self.scales)):
            pieces.append(self.embed_scale(k, labels, f_hat, B))
            f_hat = f_hat + self.tokenizer.scale_vectors(codes[k], k).detach()  # (B, D, g, g)
        return torch.cat(pieces, 1)  # (B, L, C)

    def forward(self, tokens: torch.Tensor, labels=None) -> torch.Tensor:
        """Flat codes (B, L) -> logits (B, L, V); position i sees the class and all coarser scales only."""
        x = self.teacher_inputs(self.split(tokens), labels)
        return self.head(self.transformer(x, mask=self.mask))  # (B, L, V)

    def nll(self, batch) -> torch.Tensor:
        """Negative log-likelihood of all 104 codes in nats per image, (B,)."""
        x, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        tokens = self.to_tokens(x)
        logits = self(tokens, labels if self.n_classes else None)
        return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").sum(1)

    def loss(self, batch) -> torch.Tensor:
        return self.nll(batch).mean() / self.seq_len

    # --- sampling: one pass per scale ---
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
        use_cache: bool = True,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images (n, 1, H, W), one transformer pass per scale, coarse to fine.

        Guidance ramps linearly over the scales from 1 (coarsest) to cfg_scale (finest).
        use_cache=False recomputes all earlier scales every pass (same codes, slower).
        return_trace=True also returns {"frames": (K, n, 1, H, W) decoded after each scale, "codes", "passes"}.
        """
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        labels, guided = self.class_emb.sampling_labels(n, labels, cfg_scale)
        rows, K = (2 * n if guided else n), len(self.scales)
        with eval_mode(self):
            cache = self.transformer.new_cache(rows) if use_cache else None
            f_hat, codes, inputs, frames = 0, [], [], []
            for k in progress_bar(range(K), progress, desc="scales"):
                x = self.embed_scale(k, labels, f_hat, rows)  # (rows, s_k^2, C)
                if cache is not None:
                    hidden = self.transformer(x, mask=self.mask, cache=cache)  # (rows, s_k^2, C)
                else:
                    inputs.append(x)
                    hidden = self.transformer(torch.cat(inputs, 1), mask=self.mask)[:, -x.shape[1] :]
                logits = self.head(hidden)  # (rows, s_k^2, V)
                if guided:
                    logits = cfg_mix(logits[:n], logits[n:], 1 + (cfg_scale - 1) * k / max(1, K - 1))
                idx = sample_logits(logits, temperature, top_k, top_p, generator).view(n, self.scales[k], -1)
                codes.append(idx)
                contribution = self.tokenizer.scale_vectors(idx, k)  # (n, D, g, g)
                f_hat = f_hat + (torch.cat([contribution, contribution]) if guided else contribution)
                if return_trace:
                    frames.append(self.tokenizer.decode(codes).cpu())
        out = torch.cat([c.flatten(1) for c in codes], 1) if return_tokens else self.tokenizer.decode(codes)
        if return_trace:
            return out, {"frames": torch.stack(frames), "codes": [c.cpu() for c in codes], "passes": K}
        return out


PRESETS, DATA = token_ar.PRESETS, token_ar.DATA  # the raster GPT's sizes: notebook 04 compares the two
TOKENIZER = "msvq"
