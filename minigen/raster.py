"""RasterGPT: a causal transformer over a fixed-length sequence of discrete tokens, class token first.

The shared base of three paradigms (Chen et al. 2020, image GPT, at toy scale): the pixel transformer of
pixel_ar.py (a token is a pixel), the token GPT of token_ar.py (a token is a VQ code) and the incremental Decoder
of speculative decoding. The model, the likelihood and the KV-cached sampling loop live here, once.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, eval_mode, progress_bar
from minigen.sampling import cfg_mix, check_sampling_args, sample_from_probs, warp_logits


class RasterGPT(nn.Module):
    """A causal transformer over a fixed-length sequence of discrete tokens, class token first.

    Subclasses say what a token is (a pixel, a VQ code) through to_tokens / to_images; the
    model, the likelihood and the KV-cached sampler are shared. Position t predicts token t.
    """

    def __init__(
        self,
        seq_len: int,
        vocab_size: int,
        n_classes: int,
        class_drop: float,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
    ):
        super().__init__()
        self.seq_len, self.vocab_size, self.n_classes = seq_len, vocab_size, n_classes
        self.transformer = Transformer(
            TransformerConfig(
                n_layer=n_layer, n_head=n_head, n_embd=n_embd, max_len=seq_len, pos="learned", dropout=dropout
            )
        )
        self.class_emb = ClassEmbedding(n_classes, n_embd, class_drop)
        self.token_emb = nn.Embedding(vocab_size, n_embd)
        self.head = nn.Linear(n_embd, vocab_size)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)  # start from the uniform distribution: loss = log(vocab)
        nn.init.zeros_(self.head.bias)

    # --- what a token is: overridden by subclasses ---
    def to_tokens(self, x) -> torch.Tensor:
        raise NotImplementedError

    def to_images(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _split(self, batch):
        x, labels = batch if isinstance(batch, (list, tuple)) else (batch, None)
        return self.to_tokens(x), (labels if self.n_classes > 0 else None)

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got min {int(tokens.min())}, max {int(tokens.max())}"
            )
        return tokens.long()

    # --- the model ---
    def embed(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Tokens (B, t) of the first t positions -> input embeddings (B, t + 1, C), class token first."""
        tokens = self.check_tokens(tokens)
        start = self.class_emb(labels, batch=tokens.shape[0]).unsqueeze(1)  # (B, 1, C)
        return torch.cat([start, self.token_emb(tokens)], dim=1)  # (B, t + 1, C)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, L) -> logits (B, L, V) where logits[:, i] only sees tokens[:, :i]."""
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"expected tokens (B, {self.seq_len}), got {tuple(tokens.shape)}")
        emb = self.embed(tokens[:, :-1], labels)  # (B, L, C)
        return self.head(self.transformer(emb, mask="causal"))  # (B, L, V)

    def nll(self, batch) -> torch.Tensor:
        """Negative log-likelihood of the token sequence in nats per image, (B,).
        Divide by seq_len * ln 2 for bits per token (metrics.bits_per_dim does)."""
        tokens, labels = self._split(batch)
        logits = self(tokens, labels)  # (B, L, V)
        return F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").sum(1)  # (B,)

    def loss(self, batch) -> torch.Tensor:
        """Mean nats per token, the training objective."""
        return self.nll(batch).mean() / self.seq_len

    # --- sampling ---
    @torch.no_grad()
    def sample_tokens(
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
        snapshot_every: int | None = None,
        compile: bool = False,
    ):
        """Generate token sequences (n, L), one token per network pass.

        use_cache=True: the first pass runs the class token and keeps every layer's keys and values;
        each later pass feeds only the newest token, which attends to the cache. use_cache=False: each
        pass recomputes the whole prefix (same tokens, more work). With guidance (labels, cfg_scale != 1)
        the batch holds a conditional and an unconditional copy of every row and their logits are mixed.
        compile=True runs each pass through a static cache and torch.compile (nn.compiled_blocks): the same
        tokens for the same generator, without the per-op overhead that dominates a small model's pass; the
        first call per batch size pays the compilation.
        Returns (tokens, snapshots): snapshots lists (t, tokens[:, :t]) every `snapshot_every` steps.
        """
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        if compile and not use_cache:
            raise ValueError("compile=True needs use_cache=True: it compiles the cached pass")
        labels, guided = self.class_emb.sampling_labels(n, labels, cfg_scale)  # guided: 2n labels, n of them null
        cache = self.transformer.new_cache(2 * n if guided else n, compile=compile) if use_cache else None
        tokens = torch.zeros(n, 0, dtype=torch.long, device=self.head.weight.device)  # (n, t)
        snapshots = []
        with eval_mode(self):
            for t in progress_bar(range(self.seq_len), progress, desc="tokens"):
                rows = torch.cat([tokens, tokens]) if guided else tokens  # (n or 2n, t)
                if cache is not None and t > 0:
                    x = self.token_emb(rows[:, -1:])  # (rows, 1, C): the newest token; the cache holds the rest
                else:
                    x = self.embed(rows, labels)  # (rows, t + 1, C): class token and the whole prefix
                logits = self.head(self.transformer(x, mask="causal", cache=cache)[:, -1])  # (rows, V)
                if guided:
                    logits = cfg_mix(logits[:n], logits[n:], cfg_scale)  # (n, V)
                probs = warp_logits(logits, temperature, top_k, top_p)  # (n, V): temperature, top-k, top-p
                tokens = torch.cat([tokens, sample_from_probs(probs, generator)[:, None]], dim=1)  # (n, t + 1)
                if snapshot_every and ((t + 1) % snapshot_every == 0 or t + 1 == self.seq_len):
                    snapshots.append((t + 1, tokens.clone()))
        return tokens, snapshots
