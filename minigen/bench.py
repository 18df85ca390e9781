"""`python -m minigen.bench`: sampling speed of every paradigm, and the ratios that matter, in one run.

Times are measured side by side on one device in one process, so ratios are meaningful even where
absolute times are not. Models are the preset's sizes; pass trained checkpoints (--checkpoint
NAME=PATH) to also report likelihoods, otherwise weights are freshly initialised (speed only: the
work per pass does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from minigen import registry
from minigen import speculative as spec
from minigen.train import device_name, load_model, pick_device, preset, seed_everything

# paradigm -> sampler variants to time, as (label, sample kwargs); the first is the reference
VARIANTS = {
    "pixelgpt": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    "pixel": [("windowed", {})],
    "token": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    "maskgit": [("T=8", dict(steps=8)), ("T=49", dict(steps=49))],
    "var": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    # MAR: num_iter transformer passes, each followed by S sequential calls of the denoising head
    "mar": [("K=16 S=50", dict(num_iter=16, steps=50)), ("K=16 S=10", dict(num_iter=16, steps=10)),
            ("K=8 S=50", dict(num_iter=8, steps=50))],
}
# speculative decoding of the token GPT (target) with the small draft GPT, batch 1 only (rows of a batch
# advance together, so larger batches gain nothing); each as (label, fn(target, draft, labels, generator))
SPECULATIVE = [
    ("plain", None),
    ("exact g=3", lambda t, d, y, g: spec.speculative_sample(t, d, len(y), y, gamma=3, generator=g)),
    ("jacobi w=8", lambda t, d, y, g: spec.jacobi_sample(t, len(y), y, window=8, generator=g)),
    ("lantern d=.2", lambda t, d, y, g: spec.lantern_sample(t, d, len(y), y, gamma=4, delta=0.2, generator=g)),
    ("multi k=3", lambda t, d, y, g: spec.multi_draft_sample(t, d, len(y), y, drafts=3, gamma=3, generator=g)),
]
# side-by-side ratios: (name, paradigm, slow variant, paradigm, fast variant)
RATIOS = [
    ("token: KV cache vs recompute", "token", "recompute", "token", "KV cache"),
    ("pixelgpt: KV cache vs recompute", "pixelgpt", "recompute", "pixelgpt", "KV cache"),
    ("token GPT (49 passes) vs Gated PixelCNN (784)", "pixel", "windowed", "token", "KV cache"),
    ("MaskGIT T=8 vs raster token GPT (KV cache)", "token", "KV cache", "maskgit", "T=8"),
    ("VAR (6 passes) vs raster token GPT (KV cache)", "token", "KV cache", "var", "KV cache"),
    ("var: KV cache vs recompute", "var", "recompute", "var", "KV cache"),
    ("MAR K=16 S=50 vs raster token GPT (KV cache)", "token", "KV cache", "mar", "K=16 S=50"),
    ("mar: S=10 vs S=50 denoising steps", "mar", "K=16 S=50", "mar", "K=16 S=10"),
] + [(f"speculative {label} vs plain", "speculative", "plain", "speculative", label) for label, _ in SPECULATIVE[1:]]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sampler(model, batch: int, repeats: int, device, **kwargs) -> float:
    """Seconds per call of model.sample(batch, ...): the best of `repeats` calls after a warm-up
    (the least disturbed one; the mean would carry whatever else the machine was doing)."""
    labels = torch.arange(batch) % model.config.n_classes if model.config.n_classes else None
    model.sample(batch, labels, generator=torch.Generator().manual_seed(0), **kwargs)
    best = float("inf")
    for r in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        model.sample(batch, labels, generator=torch.Generator().manual_seed(r + 1), **kwargs)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def passes_per_image(name: str, model, variant_kwargs: dict) -> int:
    """Sequential network passes one image needs (the decoder pass of a tokenizer not counted)."""
    if name == "pixel":
        return model.config.image_size ** 2
    if name == "maskgit":
        return int(variant_kwargs.get("steps", 8))
    if name == "var":
        return len(model.scales)
    if name == "mar":  # transformer passes; the head adds num_iter * S small sequential calls (head_passes)
        return int(variant_kwargs.get("num_iter", 16))
    return model.seq_len


def build(name: str, preset_name: str, checkpoints: dict, device):
    if name in checkpoints:
        return load_model(checkpoints[name], device=device), True
    seed_everything(0)
    model = registry.recipe(name, preset_name)["model"]
    return model.to(device).eval(), False


def speculative_rows(preset_name: str, repeats: int, checkpoints: dict, device) -> list:
    """Every speculative variant against plain KV-cached sampling, batch 1, the mean over the same
    seeds (the work depends on what gets accepted, so a best-of would favour lucky seeds)."""
    target, trained_t = build("token", preset_name, checkpoints, device)
    draft, trained_d = build("draft", preset_name, checkpoints, device)
    seeds = range(1, max(repeats, 10) + 1)
    rows = []
    for label, fn in SPECULATIVE:
        def run_one(y, g, fn=fn):  # -> (tokens, trace or None)
            return (target.sample_tokens(1, y, generator=g)[0], None) if fn is None else fn(target, draft, y, g)
        run_one(torch.tensor([0], device=device), torch.Generator().manual_seed(0))  # warm-up
        seconds, passes, accept = 0.0, 0.0, 0.0
        for seed in seeds:
            _sync(device)
            t0 = time.perf_counter()
            _, trace = run_one(torch.tensor([seed % 10], device=device), torch.Generator().manual_seed(seed))
            _sync(device)
            seconds += (time.perf_counter() - t0) / len(seeds)
            passes += (trace["target_passes"] if trace else target.seq_len) / len(seeds)
            accept += (trace["acceptance"] if trace else float("nan")) / len(seeds)
        rows.append(dict(paradigm="speculative", variant=label, batch=1, passes=round(passes, 1),
                         seconds_per_batch=seconds, images_per_second=1 / seconds, acceptance=accept,
                         trained=trained_t and trained_d))
    return rows


def run(paradigms, preset_name: str, batches, repeats: int, checkpoints: dict, device=None) -> dict:
    device = pick_device(device)
    unknown = sorted(set(paradigms) - set(VARIANTS) - {"speculative"})
    if unknown:
        raise ValueError(f"no benchmark for {unknown}; choose from {sorted(VARIANTS) + ['speculative']}")
    rows = []
    for name in paradigms:
        if name == "speculative":
            rows += speculative_rows(preset_name, repeats, checkpoints, device)
            continue
        model, trained = build(name, preset_name, checkpoints, device)
        for label, kwargs in VARIANTS[name]:
            for batch in batches:
                seconds = time_sampler(model, batch, repeats, device, **kwargs)
                rows.append(dict(paradigm=name, variant=label, batch=batch, passes=passes_per_image(name, model, kwargs),
                                 seconds_per_batch=seconds, images_per_second=batch / seconds, trained=trained))
                if name == "mar":
                    rows[-1]["head_passes"] = kwargs["num_iter"] * kwargs["steps"]
    lookup = {(r["paradigm"], r["variant"], r["batch"]): r["seconds_per_batch"] for r in rows}
    ratios = []
    for title, slow_p, slow_v, fast_p, fast_v in RATIOS:
        for batch in batches:
            if (slow_p, slow_v, batch) in lookup and (fast_p, fast_v, batch) in lookup:
                ratios.append(dict(ratio=title, batch=batch,
                                   speedup=lookup[(slow_p, slow_v, batch)] / lookup[(fast_p, fast_v, batch)]))
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "preset": preset_name, "repeats": repeats, "rows": rows, "ratios": ratios}


def format_report(report: dict) -> str:
    lines = [f"device: {report['device']} | torch {report['torch']} | preset {report['preset']} | "
             f"repeats {report['repeats']}", "",
             f"{'paradigm':<12} {'variant':<12} {'batch':>5} {'passes':>6} {'ms/batch':>10} {'images/s':>10} {'accept':>7}"]
    for r in report["rows"]:
        accept = f"{r['acceptance']:.2f}" if r.get("acceptance", float("nan")) == r.get("acceptance") else ""
        lines.append(f"{r['paradigm']:<12} {r['variant']:<12} {r['batch']:>5} {r['passes']:>6} "
                     f"{1e3 * r['seconds_per_batch']:>10.1f} {r['images_per_second']:>10.1f} {accept:>7}")
    if any(r["paradigm"] == "mar" for r in report["rows"]):
        lines.append("mar: passes are transformer passes; each is followed by S sequential denoising-head calls "
                     "(K=16 S=50: 800 head calls per image)")
    if any(r["paradigm"] == "speculative" and not r["trained"] for r in report["rows"]):
        lines.append("speculative rows use untrained models, so acceptance means nothing: pass "
                     "--checkpoint token=PATH --checkpoint draft=PATH")
    lines += ["", f"{'side by side':<48} {'batch':>5} {'speed-up':>9}"]
    for r in report["ratios"]:
        lines.append(f"{r['ratio']:<48} {r['batch']:>5} {r['speedup']:>8.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigen.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smoke", "cpu", "gpu"], default=None, help="model sizes (default: detected)")
    parser.add_argument("--paradigms", nargs="*", default=sorted(VARIANTS) + ["speculative"],
                        help=f"subset of {sorted(VARIANTS) + ['speculative']} (speculative: batch 1, needs "
                             "--checkpoint token=... and draft=... to mean anything)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row; the best one is kept")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="use trained weights for a paradigm (repeatable)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        if any("=" not in item for item in args.checkpoint):
            raise ValueError(f"--checkpoint takes NAME=PATH, got {args.checkpoint}")
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        if any(b < 1 for b in args.batches) or args.repeats < 1:
            raise ValueError("batches and repeats must be positive")
        report = run(args.paradigms, preset(args.preset), args.batches, args.repeats, checkpoints, args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
