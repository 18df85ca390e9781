"""Token-level autoregression: p(z) = prod_i p(z_i | z_<i, class) over VQ tokens in raster order.

VQGAN (Esser et al. 2021, "Taming Transformers") and LlamaGen (Sun et al. 2024): a tokenizer turns
an image into a short grid of discrete codes, and a GPT models that sequence one code at a time.
Here 49 tokens of a 7x7 grid replace 784 pixels, with a class token first for classifier-free guidance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from minigen.nn import (ClassEmbedding, Transformer, TransformerConfig, cfg_mix, check_sampling_args,
                        progress_bar, sample_from_probs, warp_logits)
from minigen.tokenizers import OnTokenizer, VQConfig


class RasterGPT(nn.Module):
    """A causal transformer over a fixed-length sequence of discrete tokens, class token first.

    Subclasses say what a token is (a pixel, a VQ code) through to_tokens / to_images; the
    model, the likelihood and the KV-cached sampler are shared. Position t predicts token t.
    """

    def __init__(self, seq_len: int, vocab_size: int, n_classes: int, class_drop: float,
                 n_layer: int, n_head: int, n_embd: int, dropout: float):
        super().__init__()
        self.seq_len, self.vocab_size, self.n_classes = seq_len, vocab_size, n_classes
        self.transformer = Transformer(TransformerConfig(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, max_len=seq_len, pos="learned", dropout=dropout))
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
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), "
                             f"got min {int(tokens.min())}, max {int(tokens.max())}")
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
    def decoder(self, rows: int, labels=None, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, cfg_scale: float = 1.0, use_cache: bool = True) -> "Decoder":
        """Next-token distributions for `rows` sequences, fed a few tokens at a time (see Decoder)."""
        return Decoder(self, rows, labels, temperature=temperature, top_k=top_k, top_p=top_p,
                       cfg_scale=cfg_scale, use_cache=use_cache)

    @torch.no_grad()
    def sample_tokens(self, n: int, labels=None, *, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                      progress: bool = False, use_cache: bool = True, snapshot_every: int | None = None):
        """Generate token sequences (n, L), one token per network pass.

        use_cache=True: after the class token is prefilled, each pass feeds only the newest token
        and attends to the cached keys/values. use_cache=False: each pass recomputes the whole prefix.
        Both draw the same tokens from the same generator. With cfg_scale != 1 the batch holds a
        conditional and an unconditional copy of every row and the logits are mixed.
        Returns (tokens, snapshots): snapshots lists (t, tokens[:, :t]) every `snapshot_every` steps.
        """
        was_training = self.training
        self.eval()
        dec = self.decoder(n, labels, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                           use_cache=use_cache)
        tokens = torch.zeros(n, 0, dtype=torch.long, device=next(self.parameters()).device)  # (n, t)
        snapshots = []
        for t in progress_bar(range(self.seq_len), progress, desc="tokens"):
            probs = dec.feed(tokens[:, -1:] if t else tokens)[:, -1]  # (n, V): the first pass is the class token
            tokens = torch.cat([tokens, sample_from_probs(probs, generator)[:, None]], dim=1)  # (n, t + 1)
            if snapshot_every and ((t + 1) % snapshot_every == 0 or t + 1 == self.seq_len):
                snapshots.append((t + 1, tokens.clone()))
        self.train(was_training)
        return tokens, snapshots


class Decoder:
    """Next-token distributions of a RasterGPT for `rows` sequences, fed incrementally.

    `feed(tokens)` appends tokens (rows, k) and returns the warped distribution of the token after each,
    (rows, k, V); the first call also runs the class token and returns k + 1 of them. `truncate(n)` forgets
    all but the first n generated tokens (speculative decoding's rollback); `reorder(index)` copies rows.
    Guidance (an unconditional copy of every row, logits mixed), temperature, top-k and top-p are applied
    here, so every sampler that uses a Decoder warps alike. With use_cache=False each feed recomputes the
    whole prefix instead of reading the KV cache (same distributions, the reference for the cache).
    """

    def __init__(self, model: RasterGPT, rows: int, labels=None, *, temperature=1.0, top_k=None, top_p=None,
                 cfg_scale=1.0, use_cache: bool = True):
        check_sampling_args(temperature, top_k, top_p, cfg_scale)
        self.model, self.rows = model, rows
        self.labels, self.guided = model.class_emb.sampling_labels(rows, labels, cfg_scale)
        self.warp = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.cfg_scale = cfg_scale
        self.seq_len, self.vocab_size = model.seq_len, model.vocab_size
        batch = 2 * rows if self.guided else rows
        self.cache = model.transformer.new_cache(batch) if use_cache else None
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
            logits = cfg_mix(logits[:self.rows], logits[self.rows:], self.cfg_scale)  # (rows, new, V)
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


# --- the raster GPT over VQ tokens ----------------------------------------------------

@dataclass
class TokenModelConfig:
    """The fields every transformer over a tokenizer's codes shares (token GPT, MaskGIT, VAR)."""
    n_classes: int = 10  # class labels; 0 for an unconditional model
    class_drop: float = 0.1  # probability of training with the null class (enables CFG)
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    n_embd: int = 128  # residual width
    dropout: float = 0.1  # dropout inside the transformer: 4,500 images overfit quickly


@dataclass
class TokenGPTConfig(TokenModelConfig):
    tokenizer: dict = field(default_factory=lambda: dataclasses.asdict(VQConfig()))  # the frozen VQ-VAE's config


class TokenGPT(OnTokenizer, RasterGPT):
    """A GPT over the grid x grid VQ tokens of an image in raster order, with the tokenizer inside.

    The tokenizer is frozen and saved with the model, so `sample` returns images and a checkpoint
    is self-contained. Batches may hold images (encoded on the fly) or ready token grids (faster).
    """

    Config = TokenGPTConfig

    def __init__(self, config: TokenGPTConfig):
        vq_config = VQConfig(**config.tokenizer)
        grid = vq_config.image_size // 4
        super().__init__(grid * grid, vq_config.n_codes, config.n_classes, config.class_drop,
                         config.n_layer, config.n_head, config.n_embd, config.dropout)
        self.config = config
        self.attach_tokenizer(vq_config)

    @torch.no_grad()
    def sample(self, n: int, labels=None, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, cfg_scale: float = 1.0, generator: torch.Generator | None = None,
               progress: bool = False, use_cache: bool = True, return_trace: bool = False,
               return_tokens: bool = False):
        """Generate n images (n, 1, H, W) in [0, 1]: seq_len token passes, then one decoder pass.

        return_tokens=True returns the token grids (n, grid, grid) instead of images.
        return_trace=True also returns {"frames": (L, n, 1, H, W), "tokens", "steps", "passes"}: after
        each token, the decoded canvas with the tokens still to come greyed out.
        """
        tokens, snapshots = self.sample_tokens(
            n, labels, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
            generator=generator, progress=progress, use_cache=use_cache, snapshot_every=1 if return_trace else None)
        out = tokens.view(n, self.grid, self.grid) if return_tokens else self.to_images(tokens)
        if not return_trace:
            return out
        frames = torch.stack([self.canvas(F.pad(prefix, (0, self.seq_len - t), value=-1))
                              for t, prefix in snapshots])  # (L, n, 1, H, W)
        return out, {"frames": frames, "tokens": tokens.view(n, self.grid, self.grid).cpu(),
                     "steps": [t for t, _ in snapshots], "passes": self.seq_len}


# MaskGIT (masked_ar) and VAR (scale_ar) reuse these, so that notebooks 04 and 05 compare models of
# the same width, depth and training budget
PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=4, n_head=4, n_embd=128), steps=3000, batch_size=32, lr=1e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=8, n_head=8, n_embd=256), steps=6000, batch_size=128, lr=5e-4, ema=0.999),
}
DATA = dict(name="mnist-subset")
TOKENIZER = "vq"  # the CLI trains (or reuses) this model first and puts it inside
