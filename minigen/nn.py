"""The one transformer every token paradigm in minigen reuses (its sampling helpers are in sampling.py).

Vaswani et al. 2017 "Attention Is All You Need"; pre-norm blocks as in GPT-2; rotary
positions from Su et al. 2021 (RoFormer). A paradigm brings its own embeddings and
output head and chooses a mask: causal (raster GPT), block-causal (VAR scales) or full
(MaskGIT, MAR). The KV cache supports prefill, append and truncate (speculative rollback).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from minigen.sampling import check_labels


@dataclass
class TransformerConfig:
    n_layer: int = 4  # number of transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width of the residual stream
    max_len: int = 256  # longest sequence (prefix included) the model will ever see
    pos: str = "learned"  # "learned" absolute positions, "rope" rotary, or "none"
    dropout: float = 0.0  # dropout on attention weights and residual branches
    mlp_ratio: int = 4  # hidden width of the MLP as a multiple of n_embd
    bias: bool = False  # biases in linear layers and LayerNorms

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.pos not in ("learned", "rope", "none"):
            raise ValueError(f"pos must be 'learned', 'rope' or 'none', got {self.pos!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("rotary positions need an even head dimension")


# --- masks: True means "may attend" -------------------------------------------------


def causal_mask(length: int, device=None) -> torch.Tensor:
    """(T, T) lower-triangular mask: position i sees positions <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def full_mask(length: int, device=None) -> torch.Tensor:
    """(T, T) all-True mask: bidirectional attention (MaskGIT, MAR)."""
    return torch.ones(length, length, dtype=torch.bool, device=device)


def block_causal_mask(block_sizes: Sequence[int], device=None) -> torch.Tensor:
    """(T, T) mask where every token of block k sees all tokens of blocks <= k (VAR)."""
    if not block_sizes or any(int(b) <= 0 for b in block_sizes):
        raise ValueError(f"block_sizes must be positive integers, got {list(block_sizes)}")
    block_id = torch.repeat_interleave(torch.arange(len(block_sizes)), torch.tensor(list(block_sizes)))
    return (block_id[:, None] >= block_id[None, :]).to(device)  # (T, T)


def _resolve_mask(mask, total_len: int, device) -> torch.Tensor:
    if isinstance(mask, str):
        if mask == "causal":
            return causal_mask(total_len, device)
        if mask == "full":
            return full_mask(total_len, device)
        raise ValueError(f"mask must be 'causal', 'full' or a boolean tensor, got {mask!r}")
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask tensor must be a square bool matrix, got {tuple(mask.shape)} {mask.dtype}")
    if mask.shape[0] < total_len:
        raise ValueError(f"mask covers {mask.shape[0]} positions but the sequence has {total_len}")
    return mask.to(device)


# --- KV cache ---------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to max_len.

    `length` is the number of cached positions. A forward pass with the cache writes its
    new keys/values at [length, length + T) and then advances `length`. `truncate(n)`
    forgets everything after position n, which is how speculative decoding rolls back.

    A static cache (static=True) keeps every shape fixed, so that the pass can be compiled: keys are
    written by index at the new positions and attention always reads all max_len slots, with a mask
    that hides the slots after each query's position. Truncating needs no clean-up: a stale slot
    after the new length lies after every later query until a later write replaces it.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device,
        dtype,
        static: bool = False,
        compiled: bool = False,
    ):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.compiled = compiled  # passes with this cache run compiled_blocks, which needs fixed shapes:
        self.static = static or compiled
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store (B, H, T, hs) keys/values at `positions` (T,); return the keys/values attention reads:
        (B, H, L+T, hs), the cached ones and these, or all (B, H, max_len, hs) slots of a static cache."""
        if self.static:  # index_copy_ takes the positions as a tensor: no Python int, no new shape per step
            self.k[layer].index_copy_(2, positions, k)
            self.v[layer].index_copy_(2, positions, v)
            return self.k[layer], self.v[layer]  # (B, H, max_len, hs)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, max_len={self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H, L+T, hs)

    def truncate(self, length: int):
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    def reorder(self, index: torch.Tensor):
        """Reorder batch rows, index (B,) (e.g. every row continues the accepted draft in multi-draft
        decoding). In place, so a compiled pass keeps reading the same buffers."""
        for buffers in (self.k, self.v):
            for t in buffers:
                t.copy_(t[index])


# --- building blocks ----------------------------------------------------------------


def rotate_half_pairs(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding: rotate channel pairs of x (B, H, T, hs) by position angles."""
    hs = x.shape[-1]
    freqs = 1.0 / (10000 ** (torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs))  # (hs/2,)
    angles = positions.float()[:, None] * freqs[None, :]  # (T, hs/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, hs/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, hs/2, 2)
    return out.flatten(-2)  # (B, H, T, hs)


class Attention(nn.Module):
    """Multi-head self-attention on F.scaled_dot_product_attention with an explicit mask."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head, self.rope, self.dropout = cfg.n_head, cfg.pos == "rope", cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, positions, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        if self.rope:
            q, k = rotate_half_pairs(q, positions), rotate_half_pairs(k, positions)
        if cache is not None:
            k, v = cache.write(layer, k, v, positions)  # (B, H, L+T or max_len, hs)
        drop = self.dropout if self.training else 0.0
        if cache is not None and cache.compiled:  # SDPA would stay an opaque kernel call; these three small
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # ops the compiler fuses: (B, H, T, max_len)
            y = att.masked_fill(~mask, float("-inf")).softmax(-1) @ v  # (B, H, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, H, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.n_embd
        self.net = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden, bias=cfg.bias),
            nn.GELU(),
            nn.Linear(hidden, cfg.n_embd, bias=cfg.bias),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, positions, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), mask, positions, cache, layer)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A stack of blocks over input embeddings (B, T, C) -> normalised hidden states (B, T, C).

    It owns positions but no token embedding and no head: those belong to the paradigm.
    `mask` is "causal", "full" or a (max_len, max_len) bool tensor in absolute positions
    (e.g. block_causal_mask). With a cache, the T inputs sit at positions
    [cache.length, cache.length + T) and see every cached position the mask allows.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.apply(init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight") or name.endswith("net.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def new_cache(self, batch: int, device=None, dtype=None, *, static: bool = False, compile: bool = False):
        """A KVCache for `batch` rows. static=True fixes every shape of a cached pass; compile=True (which
        implies static) also runs the blocks through torch.compile (see compiled_blocks)."""
        p = next(self.parameters())
        cfg = self.cfg
        cache = KVCache(
            cfg.n_layer,
            batch,
            cfg.n_head,
            cfg.max_len,
            cfg.n_embd // cfg.n_head,
            device or p.device,
            dtype or p.dtype,
            static=static,
            compiled=compile,
        )
        if compile and cache.k[0].device.type == "cuda":  # CUDA graphs replay fixed addresses: say these are fixed
            for t in cache.k + cache.v:
                torch._dynamo.mark_static_address(t)
        return cache

    def forward(self, x: torch.Tensor, mask="causal", cache: KVCache | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.cfg.n_embd:
            raise ValueError(f"expected embeddings (B, T, {self.cfg.n_embd}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_len:
            raise ValueError(f"sequence of {start + T} positions exceeds max_len={self.cfg.max_len}")
        positions = torch.arange(start, start + T, device=x.device)  # (T,)
        if cache is not None and cache.static:
            attn_mask = mask  # run_blocks resolves it from the positions tensor, so a compiled pass includes it
        elif T == 1 and isinstance(mask, str):  # one new token under "causal" or "full" sees every position:
            attn_mask = None  # no mask lets SDPA take its fastest path (the cached sampling step)
        else:
            attn_mask = _resolve_mask(mask, start + T, x.device)[start : start + T, : start + T]  # (T, L+T)
        blocks = compiled_blocks(x.device.type) if cache is not None and cache.compiled else Transformer.run_blocks
        x = blocks(self, x, attn_mask, positions, cache)
        if cache is not None:
            cache.length += T
        return x

    def run_blocks(self, x, attn_mask, positions, cache):
        """Positions, blocks and final norm: (B, T, C) -> (B, T, C). No Python number here depends on the
        step, so with a static cache every call of the same (B, T) has the same shapes: what compiling needs."""
        if cache is not None and cache.static:  # attention reads all max_len slots: hide those after the newest
            slots = torch.arange(self.cfg.max_len, device=x.device)  # (max_len,)
            written = slots <= positions[-1]  # a stale slot after it is left from a rolled-back guess
            attn_mask = _resolve_mask(attn_mask, self.cfg.max_len, x.device)[positions] & written  # (T, max_len)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)  # (B, T, C)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, positions, cache, i)
        return self.ln_f(x)  # (B, T, C)


_COMPILED_BLOCKS = {}


def compiled_blocks(device_type: str):
    """Transformer.run_blocks through torch.compile, one per device type, shapes fixed (each new (B, T)
    compiles once, in seconds to a minute: a cost the first samples pay). On CUDA mode="reduce-overhead"
    records CUDA graphs, which replay a whole pass as one launch; on the CPU inductor emits C++ (it needs a
    compiler, gcc or clang) and the gain is the Python and dispatch overhead of the small ops it fuses."""
    if device_type not in _COMPILED_BLOCKS:
        import torch._dynamo

        # every model, batch size and pass length is one compiled entry; the default limit (8) is for one model
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        if device_type == "cuda":
            options = dict(mode="reduce-overhead")
        else:  # a C++ wrapper instead of a Python one around the kernels: a pass is a few hundred microseconds
            options = dict(options={"cpp_wrapper": True})
        _COMPILED_BLOCKS[device_type] = torch.compile(Transformer.run_blocks, dynamic=False, **options)
    return _COMPILED_BLOCKS[device_type]


def init_weights(module: nn.Module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class ClassEmbedding(nn.Module):
    """Class label -> vector, with one extra "null" class for classifier-free guidance.

    During training each label is replaced by the null class with probability `drop_prob`,
    so the same network also learns the unconditional distribution.
    """

    def __init__(self, n_classes: int, dim: int, drop_prob: float = 0.1):
        super().__init__()
        if n_classes < 0 or not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"need n_classes >= 0 and 0 <= drop_prob < 1, got {n_classes}, {drop_prob}")
        self.n_classes, self.drop_prob = n_classes, drop_prob
        self.null_id = n_classes
        self.embed = nn.Embedding(n_classes + 1, dim)

    def forward(self, labels: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        if labels is None:  # unconditional: everyone gets the null class
            labels = torch.full((batch,), self.null_id, dtype=torch.long, device=self.embed.weight.device)
        else:
            labels = check_labels(labels, self.n_classes, batch, allow_null=True).to(self.embed.weight.device)
            if self.training and self.drop_prob > 0:
                drop = torch.rand(labels.shape, device=labels.device) < self.drop_prob
                labels = torch.where(drop, torch.full_like(labels, self.null_id), labels)
        return self.embed(labels)  # (B, C)

    def null_labels(self, batch: int, device=None) -> torch.Tensor:
        return torch.full((batch,), self.null_id, dtype=torch.long, device=device or self.embed.weight.device)

    def sampling_labels(self, n: int, labels, cfg_scale: float = 1.0):
        """Checked labels for sampling n images, and whether guidance is on. With guidance (labels given,
        cfg_scale != 1) the n labels are followed by n null labels: conditional and unconditional rows
        run in one batch, and the sampler mixes their logits with cfg_mix."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if labels is None:
            if cfg_scale != 1.0:
                raise ValueError(
                    f"classifier-free guidance (cfg_scale={cfg_scale}) needs class labels; "
                    "pass labels or leave cfg_scale at 1"
                )
            return None, False
        device = self.embed.weight.device
        labels = check_labels(labels, self.n_classes, n).to(device)
        if cfg_scale == 1.0:
            return labels, False
        return torch.cat([labels, self.null_labels(n, device)]), True


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (JupyterLab, VS Code, Colab, Kaggle: their shells all subclass ipykernel's)."""
    ipython, zmqshell = sys.modules.get("IPython"), sys.modules.get("ipykernel.zmqshell")
    if ipython is None or zmqshell is None:  # a kernel has imported both long before our code runs
        return False
    return isinstance(ipython.get_ipython(), zmqshell.ZMQInteractiveShell)


class _LineInPlace(tqdm):
    """A text tqdm bar that a Jupyter output replaces in place (a display handle, not carriage returns), so the
    output a notebook stores is the bar's last frame: readable on GitHub and in an untrusted notebook, where a
    widget bar would show only its first frame."""

    def __init__(self, *args, **kwargs):
        self._handle = None
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ascii", False)  # the discarded file has no encoding, from which tqdm would infer ASCII
        super().__init__(*args, file=_Discard(), ncols=kwargs.pop("ncols", 100), mininterval=0.5, **kwargs)

    def display(self, msg=None, pos=None):
        from IPython.display import display

        text = {"text/plain": msg if msg is not None else self.__str__()}
        if self._handle is None:
            self._handle = display(text, raw=True, display_id=True)
        else:
            self._handle.update(text, raw=True)
        return True


class _Discard:
    def write(self, _):
        pass

    def flush(self):
        pass


def progress_bar(iterable, progress: bool = True, **kwargs):
    """A tqdm bar over iterable (a sampler's passes, a training loop): in a terminal tqdm's own, in Jupyter one
    line of text updated in place. progress=False hides it, otherwise TQDM_DISABLE=1 still can."""
    bar = _LineInPlace if in_jupyter() else tqdm
    return bar(iterable, **kwargs, **({} if progress else {"disable": True}))


@contextlib.contextmanager
def eval_mode(*modules):
    """A block in which `modules` run in eval mode (no dropout, no training-time updates); each gets its
    own mode back afterwards, even on an error. Anything that is not an nn.Module is ignored, and so is a module
    already wholly in eval mode (switching walks every submodule twice: a cost per sampler call)."""
    modules = [m for m in modules if isinstance(m, nn.Module) and any(x.training for x in m.modules())]
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
