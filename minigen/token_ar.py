"""Token-level autoregression: p(z) = prod_i p(z_i | z_<i, class) over VQ tokens in raster order.

VQGAN (Esser et al. 2021, "Taming Transformers") and LlamaGen (Sun et al. 2024): a tokenizer turns
an image into a short grid of discrete codes, and a GPT models that sequence one code at a time.
Here 49 tokens of a 7x7 grid replace 784 pixels, with a class token first for classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minigen.raster import RasterGPT
from minigen.tokenizers import OnTokenizer, VQConfig

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
        super().__init__(
            grid * grid,
            vq_config.n_codes,
            config.n_classes,
            config.class_drop,
            config.n_layer,
            config.n_head,
            config.n_embd,
            config.dropout,
        )
        self.config = config
        self.attach_tokenizer(vq_config)

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
        compile: bool = False,
        return_trace: bool = False,
        return_tokens: bool = False,
    ):
        """Generate n images (n, 1, H, W) in [0, 1]: seq_len token passes, then one decoder pass.

        return_tokens=True returns the token grids (n, grid, grid) instead of images.
        return_trace=True also returns {"frames": (L, n, 1, H, W), "tokens", "steps", "passes"}: after
        each token, the decoded canvas with the tokens still to come greyed out.
        """
        tokens, snapshots = self.sample_tokens(
            n,
            labels,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            cfg_scale=cfg_scale,
            generator=generator,
            progress=progress,
            use_cache=use_cache,
            compile=compile,
            snapshot_every=1 if return_trace else None,
        )
        out = tokens.view(n, self.grid, self.grid) if return_tokens else self.to_images(tokens)
        if not return_trace:
            return out
        frames = torch.stack(
            [self.canvas(F.pad(prefix, (0, self.seq_len - t), value=-1)) for t, prefix in snapshots]
        )  # (L, n, 1, H, W)
        return out, {
            "frames": frames,
            "tokens": tokens.view(n, self.grid, self.grid).cpu(),
            "steps": [t for t, _ in snapshots],
            "passes": self.seq_len,
        }


# MaskGIT (masked_ar) and VAR (scale_ar) reuse these, so that notebooks 04 and 05 compare models of
# the same width, depth and training budget
PRESETS = {
    "smoke": dict(config=dict(n_layer=1, n_head=2, n_embd=32), steps=30, batch_size=32, lr=2e-3),
    "cpu": dict(config=dict(n_layer=4, n_head=4, n_embd=128), steps=3000, batch_size=32, lr=1e-3, ema=0.998),
    "gpu": dict(config=dict(n_layer=8, n_head=8, n_embd=256), steps=6000, batch_size=128, lr=5e-4, ema=0.999),
}
DATA = dict(name="mnist-subset")
TOKENIZER = "vq"  # the CLI trains (or reuses) this model first and puts it inside
