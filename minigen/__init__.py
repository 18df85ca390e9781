"""minigen: autoregressive generation, one small readable file per paradigm.

Start with notebooks/00_overview.ipynb. The shared parts:
  minigen.data     datasets (offline MNIST subset, verified downloads, synthetic sets)
  minigen.nn       the transformer (causal / block-causal / full masks, KV cache)
  minigen.sampling temperature, top-k, top-p, guidance; one token drawn per row
  minigen.train    fit(), train_or_load(), pick_device(), seed_everything(), preset()
  minigen.checkpoints  checkpoints that resume a run exactly
  minigen.weights  the pretrained weights that ship with the package (train_or_load uses them)
  minigen.viz      image grids, loss curves, mask pictures, generation traces
  minigen.metrics  nats per image, bits per dimension, classifier FID and class accuracy of samples
Paradigms: pixel_ar (PixelGPT, GatedPixelCNN), tokenizers (VQVAE, MultiScaleVQ, ContinuousAE), token_ar (TokenGPT),
masked_ar (MaskGIT), scale_ar (VAR), diffusion_ar (MAR), flow_ar (FlowAR, XAR), neighbour_ar (NAR), distilled
(teacher_map, DDStudent, MarginalBaseline), speculative (the exact rule, the Decoder, speculative_sample, the cost
model), speculative_variants (jacobi_sample, lantern_sample, multi_draft_sample), arnet (ARNet, ClassicAR).
Decoding speed: roofline (pass timings, the decoding roofline, interleaved timing, the machine's ceilings and the
roofline plot). Architecture sketches: diagrams (VAR, MAR, one drawn round of speculative decoding).
"""

from minigen import speculative, speculative_variants
from minigen.data import BinaryPatterns, load_images, make_loader
from minigen.masked_ar import MaskGIT, MaskGITConfig
from minigen.metrics import bits_per_dim, dataset_nll
from minigen.nn import Transformer, TransformerConfig, block_causal_mask, causal_mask, full_mask
from minigen.pixel_ar import PixelGPT, PixelGPTConfig
from minigen.registry import load_model
from minigen.speculative import speculative_sample
from minigen.speculative_variants import jacobi_sample, lantern_sample, multi_draft_sample
from minigen.token_ar import TokenGPT, TokenGPTConfig
from minigen.tokenizers import VQVAE, VQConfig
from minigen.train import fit, pick_device, preset, save_checkpoint, seed_everything, train_or_load

__version__ = "0.2.0"  # the package version too (pyproject.toml reads it from here)
__all__ = [
    "BinaryPatterns",
    "load_images",
    "make_loader",
    "bits_per_dim",
    "dataset_nll",
    "Transformer",
    "TransformerConfig",
    "block_causal_mask",
    "causal_mask",
    "full_mask",
    "PixelGPT",
    "PixelGPTConfig",
    "TokenGPT",
    "TokenGPTConfig",
    "VQVAE",
    "VQConfig",
    "MaskGIT",
    "MaskGITConfig",
    "speculative",
    "speculative_variants",
    "speculative_sample",
    "jacobi_sample",
    "lantern_sample",
    "multi_draft_sample",
    "fit",
    "load_model",
    "pick_device",
    "preset",
    "save_checkpoint",
    "seed_everything",
    "train_or_load",
]
