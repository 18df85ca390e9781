"""The decoding roofline: what one pass of an AR sampler costs, and how to time samplers fairly (notebook 10).

A sampler pays one network pass per step. On the flat part of the roofline a pass over more positions (a
speculative check, a Jacobi window) or more rows (a batch) costs no more than a pass over one: the pass is bound by
reading the weights and by overheads, not by arithmetic. Here: the time of one cached pass (`pass_seconds`), the
two axes of the roofline (`roofline`), cost ratios timed back to back (`pass_ratio`), functions timed in turns so
that a drifting machine slows them alike (`interleaved`), untrained models of any size (`timing_model`) and a
trained model made deeper without changing what it draws (`deepened`). gpt-fast (pytorch-labs) keeps its decoding
tools beside the model in the same way.

The true roofline (Williams et al. 2009) puts each timed pass under this machine's two ceilings: its memory
bandwidth and its flop rate, measured (`machine_ceilings`), or a GPU's from its datasheet (`H100_SXM`), against the
pass's arithmetic intensity (`arithmetic_intensity`, FLOP per byte) and attained flop rate (`roofline_points`);
`plot_roofline` draws them.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from statistics import fmean, median

import matplotlib.pyplot as plt
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


# --- the roofline's two ceilings, and where a pass sits under them ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """The two limits of the roofline (Williams et al. 2009): bytes moved per second and floating-point operations
    per second. Below the ridge intensity (flops / bandwidth, FLOP per byte) memory is the limit, above it
    arithmetic."""

    label: str  # which machine (and precision) these are
    bandwidth: float  # bytes per second to and from main memory
    flops: float  # floating-point operations per second

    @property
    def ridge(self) -> float:
        """The arithmetic intensity (FLOP per byte) where the two ceilings meet."""
        return self.flops / self.bandwidth

    def attainable(self, intensity):
        """The roof: min(flops, bandwidth * intensity), FLOP/s at that many FLOP per byte."""
        return min(self.flops, self.bandwidth * intensity)


# the datasheet's peaks, dense (the sparse ones double them): NVIDIA H100 Tensor Core GPU datasheet, SXM5 column:
# 3.35 TB/s HBM3, 67 TFLOP/s FP32 on the CUDA cores, 989 TFLOP/s BF16 on the tensor cores (1,979 "with sparsity")
H100_SXM = {
    "fp32": Ceilings("NVIDIA H100 SXM, FP32 (datasheet)", 3.35e12, 67e12),
    "bf16": Ceilings("NVIDIA H100 SXM, BF16 tensor cores (datasheet)", 3.35e12, 989e12),
}


@torch.no_grad()
def machine_ceilings(device=None, *, megabytes: int | None = None, n: int | None = None, repeats: int = 5) -> Ceilings:
    """This machine's two ceilings in float32, measured: the bandwidth of copying one tensor of `megabytes` MB into
    another (bytes read + written over the median time) and the flop rate of an n x n matmul (2 n^3 over the
    median time). Defaults: 256 MB and n = 2048 on a CPU (about a second on two cores), 1 GB and n = 8192 on a
    GPU; smaller sizes measure caches and launch overheads rather than the ceilings. On a GPU the matmul runs
    in TF32 where torch.set_float32_matmul_precision allows it (not by default). The matmul is what a pass's
    linear layers run, so it is the ceiling they could reach; vendors' peaks are higher still."""
    device = pick_device(device)
    big = device.type != "cpu"
    megabytes = (1024 if big else 256) if megabytes is None else megabytes
    n = (8192 if big else 2048) if n is None else n
    if min(megabytes, n, repeats) < 1:
        raise ValueError(f"need positive sizes and repeats, got {megabytes} MB, n = {n}, {repeats} repeats")
    src = torch.ones(megabytes * 2**20 // 4, device=device)  # float32
    dst = torch.empty_like(src)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    copy, matmul = lambda: dst.copy_(src), lambda: torch.mm(a, b, out=out)
    copy(), matmul()  # warm-up: first touches of the memory, library initialisation
    t_copy = median(timed(device, copy)[0] for _ in range(repeats))
    t_mm = median(timed(device, matmul)[0] for _ in range(repeats))
    label = f"this machine ({device.type}), FP32 measured"
    return Ceilings(label, 2 * src.numel() * 4 / t_copy, 2 * n**3 / t_mm)


def pass_flops(n_params: int, batch: int = 1, new: int = 1) -> float:
    """About 2 P B T: every weight is used in one multiply and one add per fed position of every row."""
    return 2.0 * n_params * batch * new


def kv_cache_bytes(model: RasterGPT, batch: int = 1, new: int = 1, prefix: int = 8) -> int:
    """Bytes of float32 keys and values a cached pass reads: every layer's (batch, prefix + new, width) twice."""
    cfg = model.transformer.cfg
    return 2 * cfg.n_layer * batch * (prefix + new) * cfg.n_embd * 4


def arithmetic_intensity(n_params: int, batch: int = 1, new: int = 1, kv_bytes: int = 0) -> float:
    """FLOP per byte of one pass: 2 P B T over the 4 P bytes of float32 weights read once (plus `kv_bytes`, e.g.
    kv_cache_bytes(...), for the cache): B T / 2 without the cache, notebook 10's t(B, T) formula."""
    return pass_flops(n_params, batch, new) / (4.0 * n_params + kv_bytes)


def roofline_points(curve: dict, n_params: int, label: str = "") -> list[dict]:
    """A `roofline(...)` result as points under the roof: per timed pass its batch, new positions, seconds,
    arithmetic intensity (FLOP/byte) and attained flop rate 2 P B T / t (FLOP/s)."""
    sizes = [(1, t, s) for t, s in curve.get("new", {}).items()] + [
        (b, 1, s) for b, s in curve.get("batch", {}).items()
    ]
    return [
        dict(
            label=label,
            batch=b,
            new=t,
            seconds=s,
            intensity=arithmetic_intensity(n_params, b, t),
            flops=pass_flops(n_params, b, t) / s,
        )
        for b, t, s in sizes
    ]


# --- the plot ----------------------------------------------------------------------------------------------------


def _si(value: float, unit: str) -> str:
    """12.3e9 -> '12.3 G' + unit."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def plot_roofline(points, ceilings, gpu=None, *, params=None, ax=None, title: str | None = None):
    """The roofline: attained FLOP/s against arithmetic intensity (FLOP per byte), log-log, under this machine's
    ceilings (a sloped bandwidth line, a flat peak line, the ridge where they meet) and optionally a GPU's
    (datasheet Ceilings, one or several, dashed). `points` are roofline.roofline_points(...) dicts, or
    roofline.roofline(...) results with their parameter counts in `params`: {label: result} with
    params={label: P}, or one result with params=P. Circles feed T new positions at batch 1, squares B rows at
    one position; the series' ends are labelled with their size (once for ends of the same size). Returns the Figure."""
    if isinstance(points, dict) and "new" in points:
        points = roofline_points(points, params)
    elif isinstance(points, dict):
        points = [p for label, curve in points.items() for p in roofline_points(curve, params[label], label)]
    points = list(points)
    if not points:
        raise ValueError("no points to plot")
    gpus = [] if gpu is None else [gpu] if hasattr(gpu, "ridge") else list(getattr(gpu, "values", lambda: gpu)())
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.8))
    roofs = [ceilings, *gpus]
    lo = min(0.25, min(p["intensity"] for p in points) / 2)
    hi = 4 * max(max(p["intensity"] for p in points), *(c.ridge for c in roofs))
    for k, roof in enumerate(roofs):
        style = dict(color="k" if k == 0 else "0.45", lw=1.6 if k == 0 else 1.1, ls="-" if k == 0 else "--")
        tag = "" if k == 0 else "gpu "
        ax.plot([lo, roof.ridge], [roof.bandwidth * lo, roof.flops], gid=tag + "bandwidth", **style)
        ax.plot([roof.ridge, hi], [roof.flops, roof.flops], gid=tag + "peak", label=roof.label, **style)
        ax.plot([roof.ridge], [roof.flops], "o", mfc="w", mec=style["color"], ms=6, gid=tag + "ridge")
        note = dict(textcoords="offset points", ha="right", va="bottom", fontsize=8, color=style["color"])
        ax.annotate(f"{_si(roof.flops, 'FLOP/s')}, ridge {roof.ridge:.3g} FLOP/B", (hi, roof.flops), (-4, 4), **note)
        x = lo * 10  # the bandwidth's label, above and left of a point of its line
        ax.annotate(_si(roof.bandwidth, "B/s"), (x, roof.bandwidth * x), (-2, 2), **note)
    labels = list(dict.fromkeys(p.get("label", "") for p in points))
    ends = {}  # end label -> (point, series colour index)
    for k, label in enumerate(labels):
        mine = [p for p in points if p.get("label", "") == label]
        for axis, marker in (("new", "o"), ("batch", "s")):
            along = {}  # the points of this axis, the first of any pass size timed twice ((1, 1) is on both)
            for p in mine:
                if (p["batch"] if axis == "new" else p["new"]) == 1:
                    along.setdefault(p[axis], p)
            series = [along[size] for size in sorted(along)]
            if len(series) < 1 + (axis == "batch"):  # (1, 1) belongs to both: drawn with the positions
                continue
            ax.plot(
                [p["intensity"] for p in series],
                [p["flops"] for p in series],
                marker + "-",
                color=f"C{k}",
                ms=4,
                lw=0.8,
                alpha=0.9,
                gid=f"points {axis}",
                label=(label or None) if axis == "new" else None,
            )
            for p in (series[0], series[-1]) if len(series) > 1 else series[:1]:
                text = (
                    "B=T=1" if p["batch"] == p["new"] == 1 else f"T={p['new']}" if axis == "new" else f"B={p['batch']}"
                )
                if axis == "batch" and text == "B=T=1":
                    continue
                if text not in ends or p["flops"] > ends[text][0]["flops"]:
                    ends[text] = (p, k)
    for text, (p, k) in ends.items():  # series that end at the same size share one label, at the highest end
        ax.annotate(
            text,
            (p["intensity"], p["flops"]),
            xytext=(-4, 5) if text.startswith("T") else (4, -10),
            ha="right" if text.startswith("T") else "left",
            textcoords="offset points",
            fontsize=7,
            color=f"C{k}",
        )
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), xlabel="arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("attained FLOP/s  (2 P B T / t)")
    ax.grid(alpha=0.3, which="major")
    ax.set_title(title or "decoding passes under the roofline", fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    for marker, text in (("o", "T new positions, batch 1"), ("s", "B rows, one position")):
        handles.append(plt.Line2D([], [], ls="", marker=marker, color="0.5", ms=4, label=text))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return ax.figure
