"""The decoding roofline: what one pass of an AR sampler costs, and how to time samplers fairly (notebook 10).

A sampler pays one network pass per step. On the flat part of the roofline a pass over more positions (a
speculative check, a Jacobi window) or more rows (a batch) costs no more than a pass over one: the pass is bound by
reading the weights and by overheads, not by arithmetic. Here: the time of one cached pass (`pass_seconds`), the
two axes of the roofline (`roofline`), cost ratios timed back to back (`pass_ratio`), functions timed in turns so
that a drifting machine slows them alike (`interleaved`), untrained models of any size (`timing_model`) and a
trained model made deeper without changing what it draws (`deepened`). gpt-fast (pytorch-labs) keeps its decoding
tools beside the model in the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from statistics import fmean, median

import torch

from minigen.nn import Block, eval_mode
from minigen.raster import RasterGPT
from minigen.train import pick_device, seed_everything, synchronize


def timed(device, fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of fn(*args, **kwargs), the device synchronised around it so its queued GPU work counts."""
    synchronize(device)
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - t0, result


def timing_model(n_layer: int, n_head: int, n_embd: int, seq_len: int = 128, vocab_size: int = 512, device=None):
    """An untrained raster GPT of these sizes, for timing passes: the work of a pass does not depend on the weights."""
    seed_everything(0)
    model = RasterGPT(seq_len, vocab_size, 10, 0.0, n_layer, n_head, n_embd, 0.0)
    return model.to(pick_device(device)).eval()


@torch.no_grad()
def pass_seconds(model: RasterGPT, batch: int = 1, new: int = 1, *, prefix: int = 8, repeats: int = 20, compile=False):
    """Median seconds of one cached decoding pass of `model` (embedding, transformer, head): `new` positions for
    each of `batch` rows after `prefix` cached ones. A sampler pays this per step; speculative verification and
    Jacobi windows feed several positions, a batch feeds several rows."""
    if min(batch, new, prefix, repeats) < 1 or prefix + new > model.seq_len:
        raise ValueError(f"need positive sizes and prefix + new <= {model.seq_len}, got {prefix} + {new}")
    device = model.head.weight.device
    cache = model.transformer.new_cache(batch, compile=compile)
    tokens = torch.zeros(batch, new, dtype=torch.long, device=device)  # (batch, new): what they are costs nothing
    with eval_mode(model):
        model.transformer(model.embed(tokens[:, :0], None), cache=cache)  # the class token, then one at a time, so
        for _ in range(prefix - 1):  # that a compiled model compiles one pass length more at most
            model.transformer(model.token_emb(tokens[:, :1]), cache=cache)

        def one_pass():
            cache.truncate(prefix)
            return model.head(model.transformer(model.token_emb(tokens), cache=cache))  # (batch, new, V)

        for _ in range(3):  # warm-up (and compilation)
            one_pass()
        return median(timed(device, one_pass)[0] for _ in range(repeats))


def pass_ratio(model: RasterGPT, new: int = 1, reference: RasterGPT | None = None, *, rounds: int = 5, **kwargs):
    """t(model, new positions) / t(reference, one position), reference defaulting to model: the median of `rounds`
    ratios, the two passes timed back to back each time, so that a machine drifting between measurements moves
    numerator and denominator alike. v_gamma is pass_ratio(target, gamma + 1); c is pass_ratio(draft, 1, target)."""
    reference = model if reference is None else reference
    kwargs.setdefault("repeats", 5)
    return median(
        pass_seconds(model, 1, new, **kwargs) / pass_seconds(reference, 1, 1, **kwargs) for _ in range(rounds)
    )


def interleaved(fns: dict, seeds, blocks: int = 3, device="cpu", *, new_seeds: bool = False, results=None) -> dict:
    """{name: [seconds per call, one mean per block]}: every fn(seed) runs on every seed, block after block, the
    functions taking turns within each block, so that a drifting machine slows them all alike. Read the median
    of a name's blocks against another's, and the range across blocks for how far a ratio can be trusted.
    new_seeds=True gives block b the seeds shifted by b * len(seeds), so no call repeats another (blocks x
    len(seeds) different samples per function); a `results` dict gets {name: [what each call returned]}."""
    seeds = list(seeds)
    if blocks < 1 or not seeds:
        raise ValueError(f"need at least one block and one seed, got {blocks} blocks and {len(seeds)} seeds")
    out = {name: [] for name in fns}
    for block in range(blocks):
        shift = block * len(seeds) if new_seeds else 0
        for name, fn in fns.items():
            calls = [timed(device, fn, seed + shift) for seed in seeds]
            out[name].append(fmean(seconds for seconds, _ in calls))
            if results is not None:
                results.setdefault(name, []).extend(result for _, result in calls)
    return out


def roofline(model: RasterGPT, news=(1, 2, 4, 8, 16, 32, 64), batches=(1, 4, 16, 64, 256), **kwargs) -> dict:
    """pass_seconds along the two axes of the decoding roofline: {"new": {positions: s}} at batch 1 and
    {"batch": {rows: s}} at one position. Where the time stays flat, more work per pass is free."""
    news = [t for t in news if t + kwargs.get("prefix", 8) <= model.seq_len]
    return {
        "new": {t: pass_seconds(model, 1, t, **kwargs) for t in news},
        "batch": {b: pass_seconds(model, b, 1, **kwargs) for b in batches},
    }


def deepened(model: RasterGPT, extra_layers: int) -> RasterGPT:
    """A copy of a trained raster GPT with `extra_layers` blocks appended whose output projections are zero. Each
    added block adds exactly 0 to the residual stream, so the copy draws from the same distribution, but its pass
    costs what a pass of the deeper model costs: a target-sized model for timing speculative decoding with the
    acceptance of the trained pair. For timing only: its config still describes the original."""
    deep = copy.deepcopy(model)
    cfg = dataclasses.replace(deep.transformer.cfg, n_layer=deep.transformer.cfg.n_layer + extra_layers)
    device = model.head.weight.device
    for _ in range(extra_layers):
        block = Block(cfg).to(device)
        torch.nn.init.zeros_(block.attn.proj.weight)
        torch.nn.init.zeros_(block.mlp.net[2].weight)
        deep.transformer.blocks.append(block)
    deep.transformer.cfg = cfg
    return deep.eval()
