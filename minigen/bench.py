"""`python -m minigen.bench`: every paradigm's sampling cost and sample quality, side by side in one run.

Cost: sequential network passes per image and images per second at each batch size; times are measured side by
side on one device in one process, so ratios are meaningful even where absolute times are not. Quality (for
trained models): classifier FID and class accuracy of class-balanced samples (minigen.metrics: a digit-domain
Frechet distance, not Inception FID) and the test NLL where the paradigm has a likelihood. Models come from
--checkpoint NAME=PATH, else by --models: `fresh` (untrained weights of the preset's sizes: speed only, the work
per pass does not depend on the weights), `notebooks` (the checkpoints notebooks 00-07 leave in data/, trained
now where missing) or `train` (trained now with the preset's recipe, cached in data/bench/).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minigen import registry
from minigen import speculative as spec
from minigen.cli import train
from minigen.data import data_dir, load_images
from minigen.metrics import Yardstick, dataset_nll, draw, to_28  # noqa: F401 (Yardstick, to_28: notebook 09 uses them)
from minigen.nn import progress_bar
from minigen.registry import load_model
from minigen.train import CheckpointError, device_name, pick_device, read_checkpoint, seed_everything, synchronize
from minigen.train import preset as choose_preset


@dataclass(frozen=True)
class Paradigm:
    """One row of the benchmark's table: adding a paradigm to the benchmark is adding one."""

    title: str  # what its rows are, in words, for tables and charts
    notebook: str  # the checkpoint its notebook leaves in data/ as NOTEBOOK_PRESET.pt (--models notebooks)
    variants: tuple  # sampler variants to time, as (label, sample kwargs); the first is the reference


CACHE = (("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False)))
PARADIGMS = {  # in the course's order, the order of the tables whatever order the run had
    "pixelgpt": Paradigm("pixel transformer (14x14, binary)", "00_pixelgpt", CACHE),
    "pixelcnn": Paradigm("Gated PixelCNN", "01_pixelcnn_binary", (("windowed", {}),)),
    "token": Paradigm("raster token GPT", "03_token", CACHE),
    "var": Paradigm("VAR", "04_var", CACHE),
    "maskgit": Paradigm("MaskGIT", "05_maskgit", (("T=8", dict(num_iter=8)), ("T=49", dict(num_iter=49)))),
    # MAR: num_iter transformer passes, each followed by S sequential calls of the denoising head
    "mar": Paradigm("MAR", "06_mar", (("K=16 S=50", dict(num_iter=16, diffusion_steps=50)),
                                      ("K=16 S=10", dict(num_iter=16, diffusion_steps=10)),
                                      ("K=8 S=50", dict(num_iter=8, diffusion_steps=50)))),
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
TITLES = {**{name: p.title for name, p in PARADIGMS.items()}, "speculative": "speculative decoding of the token GPT"}
NOTEBOOK_CHECKPOINTS = {**{name: p.notebook for name, p in PARADIGMS.items()}, "draft": "07_draft"}
# side-by-side ratios: (name, paradigm, slow variant, paradigm, fast variant)
RATIOS = [
    ("token: KV cache vs recompute", "token", "recompute", "token", "KV cache"),
    ("pixelgpt: KV cache vs recompute", "pixelgpt", "recompute", "pixelgpt", "KV cache"),
    ("token GPT (49 passes) vs Gated PixelCNN (784)", "pixelcnn", "windowed", "token", "KV cache"),
    ("MaskGIT T=8 vs raster token GPT (KV cache)", "token", "KV cache", "maskgit", "T=8"),
    ("VAR (6 passes) vs raster token GPT (KV cache)", "token", "KV cache", "var", "KV cache"),
    ("var: KV cache vs recompute", "var", "recompute", "var", "KV cache"),
    ("MAR K=16 S=50 vs raster token GPT (KV cache)", "token", "KV cache", "mar", "K=16 S=50"),
    ("mar: S=10 vs S=50 denoising steps", "mar", "K=16 S=50", "mar", "K=16 S=10"),
] + [(f"speculative {label} vs plain", "speculative", "plain", "speculative", label) for label, _ in SPECULATIVE[1:]]
SAME_SAMPLES = {"recompute"}  # variants drawing exactly the same samples as the first one (tested): not scored again
SAMPLES = {"smoke": 50, "cpu": 500, "gpu": 500}  # class-balanced samples per scored variant, by preset
MODELS = ("fresh", "notebooks", "train")


# --- models -----------------------------------------------------------------------------------------

def build(name: str, preset_name: str, checkpoints: dict, device, models: str = "fresh"):
    """(model, checkpoint path or None for fresh weights): the checkpoint given for `name`, else by `models`
    fresh weights, the notebook's checkpoint, or one trained now with the CLI's recipe (tokenizer first) into
    data/bench/NAME-PRESET/model.pt, reused once finished. A notebook checkpoint that no longer fits the code
    (older config or parameter names) is reported and replaced by one trained now."""
    if name in checkpoints:
        return load_model(checkpoints[name], device=device), checkpoints[name]
    if models == "fresh":
        seed_everything(0)
        return registry.recipe(name, preset_name)["model"].to(device).eval(), None
    notebook = data_dir() / f"{NOTEBOOK_CHECKPOINTS[name]}_{preset_name}.pt"
    if models == "notebooks" and notebook.exists():
        try:
            return load_model(notebook, device=device), str(notebook)
        except CheckpointError as err:
            print(f"ignoring {notebook}: {err}")
    path = data_dir() / "bench" / f"{name}-{preset_name}" / "model.pt"
    if not path.exists() or read_checkpoint(path)["step"] < registry.recipe(name, preset_name)["steps"]:
        train(name, preset_name, path.parent, device=device, n=20)
    return load_model(path, device=device), str(path)


def quality_data(name: str, model) -> dict:
    """`load_images` arguments for the data this model generates (the binary or grey PixelCNN alike)."""
    data = registry.data_spec(name)
    if name == "pixelcnn":
        data["binarize"] = model.config.n_levels == 2
    return data


def nll_entry(model, data: dict) -> dict:
    """Test NLL in nats per image, and what it is over (pixels, or the tokens of a token model)."""
    if not hasattr(model, "nll"):
        return {}
    test = load_images(split="test", **data)
    over = f"{model.seq_len} tokens" if hasattr(model, "tokenizer") else f"{math.prod(test.shape)} pixels"
    return {"nll": dataset_nll(model, test, batch_size=100), "nll_over": over}


# --- rows -------------------------------------------------------------------------------------------

def time_sampler(model, batch: int, repeats: int, device, **kwargs) -> tuple[float, dict]:
    """Seconds per call of model.sample(batch, ...): the best of `repeats` calls (the least disturbed one; the
    mean would carry whatever else the machine was doing). The warm-up call before them returns its trace,
    which counts the sequential network passes ("passes"; MAR adds its denoising head's "head_passes")."""
    labels = torch.arange(batch) % model.config.n_classes if model.config.n_classes else None
    _, trace = model.sample(batch, labels, generator=torch.Generator().manual_seed(0), return_trace=True, **kwargs)
    best = float("inf")
    for r in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        model.sample(batch, labels, generator=torch.Generator().manual_seed(r + 1), **kwargs)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, trace


def paradigm_rows(name: str, preset_name: str, batches, repeats: int, checkpoints: dict, device, models: str,
                  score) -> list:
    """Every variant of one paradigm at every batch size; a trained model's samples are scored by
    `score(key, sample_fn, n_classes, data)` (once per variant) and its test NLL added."""
    model, path = build(name, preset_name, checkpoints, device, models)
    trained = path is not None
    data = quality_data(name, model)
    likelihood = nll_entry(model, data) if trained else {}
    rows = []
    for label, kwargs in PARADIGMS[name].variants:
        quality = {}
        if trained and label not in SAME_SAMPLES:
            quality = score((name, label), lambda k, y, g: model.sample(k, y, generator=g, **kwargs),
                            model.config.n_classes, data)
        for batch in batches:
            seconds, trace = time_sampler(model, batch, repeats, device, **kwargs)
            rows.append(dict(paradigm=name, variant=label, batch=batch, passes=trace["passes"],
                             seconds_per_batch=seconds, images_per_second=batch / seconds, trained=trained,
                             **quality, **likelihood))
            if "head_passes" in trace:
                rows[-1]["head_passes"] = trace["head_passes"]
    return rows


def speculative_rows(preset_name: str, repeats: int, checkpoints: dict, device, models: str, score) -> list:
    """Every speculative variant against plain KV-cached sampling, batch 1, the mean over the same
    seeds (the work depends on what gets accepted, so a best-of would favour lucky seeds). With trained
    models, `score` scores each variant's samples."""
    target, target_path = build("token", preset_name, checkpoints, device, models)
    draft, draft_path = build("draft", preset_name, checkpoints, device, models)
    trained = bool(target_path and draft_path)
    seeds = range(1, max(repeats, 10) + 1)
    rows = []
    for label, fn in SPECULATIVE:
        def run_one(y, g, fn=fn):  # -> (tokens, trace or None)
            return (target.sample_tokens(len(y), y, generator=g)[0], None) if fn is None else fn(target, draft, y, g)
        run_one(torch.tensor([0], device=device), torch.Generator().manual_seed(0))  # warm-up
        seconds, passes, accept = 0.0, 0.0, 0.0
        for seed in seeds:
            synchronize(device)
            t0 = time.perf_counter()
            _, trace = run_one(torch.tensor([seed % 10], device=device), torch.Generator().manual_seed(seed))
            synchronize(device)
            seconds += (time.perf_counter() - t0) / len(seeds)
            passes += (trace["target_passes"] if trace else target.seq_len) / len(seeds)
            accept += (trace["acceptance"] if trace else float("nan")) / len(seeds)
        rows.append(dict(paradigm="speculative", variant=label, batch=1, passes=round(passes, 1), seconds_per_batch=seconds,
                         images_per_second=1 / seconds, acceptance=accept, trained=trained))
        if trained:
            rows[-1].update(score(("speculative", label), lambda k, y, g: target.to_images(run_one(y, g)[0]),
                                  target.n_classes, registry.data_spec("token")))
    return rows


def run(*, paradigms, preset: str, batches, repeats: int, checkpoints: dict | None = None, device=None,
        models: str = "fresh", samples: int | None = None, previews: dict | None = None, progress: bool = False) -> dict:
    """Time every paradigm's variants at every batch size; with trained models also score their samples
    (`samples` per variant, default by preset; 0: speed only). Returns the report (rows, ratios, yardstick);
    a `previews` dict gets the first 20 scored samples of each variant (classes 0-9 twice)."""
    unknown = sorted(set(paradigms) - set(TITLES))
    if unknown:
        raise ValueError(f"no benchmark for {unknown}; choose from {list(TITLES)}")
    if preset not in SAMPLES:
        raise ValueError(f"preset must be one of {list(SAMPLES)}, got {preset!r}")
    if models not in MODELS:
        raise ValueError(f"models must be fresh, notebooks or train, got {models!r}")
    if not batches or any(b < 1 for b in batches) or repeats < 1:
        raise ValueError("batches and repeats must be positive")
    samples = SAMPLES[preset] if samples is None else samples
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    device, checkpoints = pick_device(device), checkpoints or {}
    made = []  # the yardstick, made on first use: its classifier takes minutes to train on a CPU

    def score(key: tuple, sample_fn, n_classes: int, data: dict) -> dict:
        """Classifier FID and class accuracy of `samples` class-balanced samples of one variant."""
        if not samples:
            return {}
        if not made:
            made.append(Yardstick(preset, device))
        images, labels = draw(sample_fn, samples, n_classes, device)
        if previews is not None:
            previews[key] = images[:20]
        return made[0].score(images, labels, data)

    rows = []
    for name in progress_bar(paradigms, progress, desc="bench"):
        if name == "speculative":
            rows += speculative_rows(preset, repeats, checkpoints, device, models, score)
        else:
            rows += paradigm_rows(name, preset, batches, repeats, checkpoints, device, models, score)
    seconds = {(r["paradigm"], r["variant"], r["batch"]): r["seconds_per_batch"] for r in rows}
    ratios = []
    for title, slow_p, slow_v, fast_p, fast_v in RATIOS:
        for batch in batches:
            if (slow_p, slow_v, batch) in seconds and (fast_p, fast_v, batch) in seconds:
                ratios.append(dict(ratio=title, batch=batch,
                                   speedup=seconds[(slow_p, slow_v, batch)] / seconds[(fast_p, fast_v, batch)]))
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "preset": preset, "repeats": repeats, "models": models, "samples": samples, "rows": rows,
            "ratios": ratios, "yardstick": made[0].report if made else None}


# --- reports ----------------------------------------------------------------------------------------

def _cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else ""


def summary(report: dict) -> list[dict]:
    """One entry per (paradigm, variant): passes, ms per image at batch 1, images/s at the largest batch,
    and the quality columns (None where not measured)."""
    out = {}
    for r in report["rows"]:
        key = (r["paradigm"], r["variant"])
        entry = out.setdefault(key, dict(paradigm=r["paradigm"], variant=r["variant"], passes=r["passes"],
                                         head_passes=r.get("head_passes"), ms_batch1=None, batch=0,
                                         images_per_second=None, fid=r.get("fid"), class_accuracy=r.get("class_accuracy"),
                                         nll=r.get("nll"), nll_over=r.get("nll_over"), acceptance=r.get("acceptance")))
        if r["batch"] == 1:
            entry["ms_batch1"] = 1e3 * r["seconds_per_batch"]
        if r["batch"] > entry["batch"]:
            entry.update(batch=r["batch"], images_per_second=r["images_per_second"])
    order = list(TITLES)  # the course's order, whatever order the run had
    return sorted(out.values(), key=lambda e: order.index(e["paradigm"]))


def markdown_table(report: dict) -> str:
    """The summary as a Markdown table (README, notebook 09), device and preset named above it."""
    big = max(r["batch"] for r in report["rows"])
    lines = [f"Device: {report['device']}, torch {report['torch']}, preset `{report['preset']}`, "
             f"{report['samples']} samples per row.", "",
             f"| paradigm | sampler | sequential passes | ms / image (batch 1) | images / s (batch {big}) | "
             "classifier FID ↓ | class accuracy | test NLL (nats / image) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for e in summary(report):
        passes = f"{e['passes']} + {e['head_passes']} head" if e["head_passes"] else f"{e['passes']}"
        nll = f"{e['nll']:.1f} ({e['nll_over']})" if e["nll"] is not None else "—"
        lines.append(f"| {TITLES[e['paradigm']]} | {e['variant']} | {passes} | {_cell(e['ms_batch1'], '.1f') or '—'} | "
                     f"{_cell(e['images_per_second'], '.0f') if e['batch'] == big else '—'} | {_cell(e['fid'], '.0f') or '—'} | "
                     f"{_cell(e['class_accuracy'], '.0%') or '—'} | {nll} |")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The report as text: one line per row, what the columns mean, then the side-by-side ratios."""
    lines = [f"device: {report['device']} | torch {report['torch']} | preset {report['preset']} | "
             f"repeats {report['repeats']} | models {report.get('models', 'fresh')}", "",
             f"{'paradigm':<12} {'variant':<12} {'batch':>5} {'passes':>6} {'ms/batch':>10} {'images/s':>10} "
             f"{'accept':>7} {'FID':>7} {'acc':>6} {'NLL':>7}"]
    for r in report["rows"]:
        lines.append(f"{r['paradigm']:<12} {r['variant']:<12} {r['batch']:>5} {r['passes']:>6} "
                     f"{1e3 * r['seconds_per_batch']:>10.1f} {r['images_per_second']:>10.1f} "
                     f"{_cell(r.get('acceptance'), '.2f'):>7} {_cell(r.get('fid'), '.1f'):>7} "
                     f"{_cell(r.get('class_accuracy'), '.1%'):>6} {_cell(r.get('nll'), '.1f'):>7}")
    if any(r["paradigm"] == "mar" for r in report["rows"]):
        lines.append("mar: passes are transformer passes; each is followed by S sequential denoising-head calls "
                     "(K=16 S=50: 800 head calls per image)")
    if any(r["paradigm"] == "speculative" and not r["trained"] for r in report["rows"]):
        lines.append("speculative rows use untrained models, so acceptance means nothing: pass "
                     "--checkpoint token=PATH --checkpoint draft=PATH")
    overs = sorted({f"{r['paradigm']}: {r['nll_over']}" for r in report["rows"] if "nll_over" in r})
    if overs:
        lines.append("NLL: test nats per image over what the model generates (" + "; ".join(overs) + ")")
    if report.get("yardstick"):
        y = report["yardstick"]
        floors = ", ".join(f"{k} {v:.1f}" for k, v in y["floor_fid"].items())
        lines.append(f"FID / acc: classifier FID (digit-domain, not Inception) and class accuracy of {report['samples']} "
                     f"class-balanced samples against the test digits of the model's kind | classifier test accuracy "
                     f"{y['classifier_test_accuracy']:.1%} | floor (500 training digits): {floors} | uniform noise "
                     f"{y['noise_fid']:.0f}")
    lines += ["", f"{'side by side':<48} {'batch':>5} {'speed-up':>9}"]
    for r in report["ratios"]:
        lines.append(f"{r['ratio']:<48} {r['batch']:>5} {r['speedup']:>8.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigen.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(SAMPLES), default=None, help="model sizes (default: detected)")
    parser.add_argument("--paradigms", nargs="*", default=list(TITLES),
                        help=f"subset of {list(TITLES)} (speculative: batch 1; its acceptance means something only "
                             "with trained models: --models notebooks, or --checkpoint token=... and draft=...)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row; the best one is kept")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="use trained weights for a paradigm (repeatable)")
    parser.add_argument("--models", choices=MODELS, default="fresh",
                        help="where models come from (see above); trained ones also get FID, class accuracy and NLL")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"samples per scored variant (default by preset: {SAMPLES}; 0: speed only)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--markdown", action="store_true", help="also print the summary as a Markdown table")
    args = parser.parse_args(argv)
    try:
        if any("=" not in item for item in args.checkpoint):
            raise ValueError(f"--checkpoint takes NAME=PATH, got {args.checkpoint}")
        report = run(paradigms=args.paradigms, preset=choose_preset(args.preset), batches=args.batches,
                     repeats=args.repeats, checkpoints=dict(item.split("=", 1) for item in args.checkpoint),
                     device=args.device, models=args.models, samples=args.samples)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.markdown:
        print("\n" + markdown_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
