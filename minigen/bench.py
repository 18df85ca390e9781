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
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from minigen import registry
from minigen import speculative as spec
from minigen.data import data_dir, load_images
from minigen.metrics import classifier_outputs, dataset_nll, digit_classifier, sample_quality
from minigen.nn import progress_bar
from minigen.registry import load_model
from minigen.train import (CheckpointError, device_name, pick_device, preset, read_checkpoint,
                           seed_everything, synchronize)

# paradigm -> sampler variants to time, as (label, sample kwargs); the first is the reference
VARIANTS = {
    "pixelgpt": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    "pixelcnn": [("windowed", {})],
    "token": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    "var": [("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False))],
    "maskgit": [("T=8", dict(num_iter=8)), ("T=49", dict(num_iter=49))],
    # MAR: num_iter transformer passes, each followed by S sequential calls of the denoising head
    "mar": [("K=16 S=50", dict(num_iter=16, diffusion_steps=50)), ("K=16 S=10", dict(num_iter=16, diffusion_steps=10)),
            ("K=8 S=50", dict(num_iter=8, diffusion_steps=50))],
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
    ("token GPT (49 passes) vs Gated PixelCNN (784)", "pixelcnn", "windowed", "token", "KV cache"),
    ("MaskGIT T=8 vs raster token GPT (KV cache)", "token", "KV cache", "maskgit", "T=8"),
    ("VAR (6 passes) vs raster token GPT (KV cache)", "token", "KV cache", "var", "KV cache"),
    ("var: KV cache vs recompute", "var", "recompute", "var", "KV cache"),
    ("MAR K=16 S=50 vs raster token GPT (KV cache)", "token", "KV cache", "mar", "K=16 S=50"),
    ("mar: S=10 vs S=50 denoising steps", "mar", "K=16 S=50", "mar", "K=16 S=10"),
] + [(f"speculative {label} vs plain", "speculative", "plain", "speculative", label) for label, _ in SPECULATIVE[1:]]
# the checkpoint each notebook leaves in data/ as NAME_PRESET.pt (--models notebooks)
NOTEBOOK_CHECKPOINTS = {"pixelgpt": "00_pixelgpt", "pixel": "01_pixelcnn_binary", "token": "03_token",
                        "var": "04_var", "maskgit": "05_maskgit", "mar": "06_mar", "draft": "07_draft"}
# variants drawing exactly the same samples as the paradigm's first one (tested), so not scored again
SAME_SAMPLES = {"recompute"}
# sample quality per preset: class-balanced samples per scored variant, and the yardstick classifier's steps
QUALITY = {"smoke": dict(samples=50, classifier_steps=100), "cpu": dict(samples=500, classifier_steps=2000),
           "gpu": dict(samples=500, classifier_steps=2000)}




def time_sampler(model, batch: int, repeats: int, device, **kwargs) -> float:
    """Seconds per call of model.sample(batch, ...): the best of `repeats` calls after a warm-up
    (the least disturbed one; the mean would carry whatever else the machine was doing)."""
    labels = torch.arange(batch) % model.config.n_classes if model.config.n_classes else None
    model.sample(batch, labels, generator=torch.Generator().manual_seed(0), **kwargs)
    best = float("inf")
    for r in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        model.sample(batch, labels, generator=torch.Generator().manual_seed(r + 1), **kwargs)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def passes_per_image(name: str, model, variant_kwargs: dict) -> int:
    """Sequential network passes one image needs (the decoder pass of a tokenizer not counted)."""
    if name == "pixelcnn":
        return model.config.image_size ** 2
    if name == "maskgit":
        return int(variant_kwargs.get("num_iter", 8))
    if name == "var":
        return len(model.scales)
    if name == "mar":  # transformer passes; the head adds num_iter * S small sequential calls (head_passes)
        return int(variant_kwargs.get("num_iter", 16))
    return model.seq_len


def train_for_bench(name: str, preset_name: str, device) -> Path:
    """Train `name` with the preset's recipe into data/bench/NAME-PRESET/model.pt (reused when finished)."""
    from minigen.cli import cmd_train  # the CLI's recipe, tokenizer first
    path = data_dir() / "bench" / f"{name}-{preset_name}" / "model.pt"
    if not path.exists() or read_checkpoint(path)["step"] < registry.recipe(name, preset_name)["steps"]:
        cmd_train(SimpleNamespace(name=name, preset=preset_name, steps=None, out=str(path.parent), device=str(device),
                                  seed=0, n=20, resume=False, tokenizer=None))
    return path


def find_checkpoint(name: str, preset_name: str, checkpoints: dict, models: str, device) -> str | None:
    """The checkpoint a paradigm's rows use: given, else the notebook's (--models notebooks), else trained."""
    if name in checkpoints or models == "fresh":
        return checkpoints.get(name)
    notebook = data_dir() / f"{NOTEBOOK_CHECKPOINTS[name]}_{preset_name}.pt"
    if models == "notebooks" and notebook.exists():
        return str(notebook)
    return str(train_for_bench(name, preset_name, device))


def build(name: str, preset_name: str, checkpoints: dict, device, models: str = "fresh"):
    """(model, checkpoint path or None for fresh weights). A notebook checkpoint that no longer fits the
    code (older config or parameter names) is reported and replaced by one trained now."""
    path = find_checkpoint(name, preset_name, checkpoints, models, device)
    if path is None:
        seed_everything(0)
        return registry.recipe(name, preset_name)["model"].to(device).eval(), None
    try:
        return load_model(path, device=device), path
    except CheckpointError as err:
        if name in checkpoints or models != "notebooks":
            raise
        print(f"ignoring {path}: {err}")
        path = str(train_for_bench(name, preset_name, device))
        return load_model(path, device=device), path


# --- sample quality ---------------------------------------------------------------------------------

def to_28(images: torch.Tensor) -> torch.Tensor:
    """The classifier reads 28x28: smaller images (the 14x14 pixel transformer) are scaled up by repetition."""
    return images if images.shape[-1] == 28 else F.interpolate(images.float(), size=(28, 28), mode="nearest")


def quality_data(name: str, model) -> dict:
    """`load_images` arguments for the data this model generates (the binary or grey PixelCNN alike)."""
    spec_ = registry.data_spec("token" if name == "speculative" else name)
    if name == "pixelcnn":
        spec_["binarize"] = model.config.n_levels == 2
    return spec_


class Yardstick:
    """The digit classifier and, per kind of data (grey or binarised, 28 or 14 pixels), the test split's
    features; every sample set is scored against the test digits of its own kind."""

    def __init__(self, preset_name: str, device):
        self.classifier = digit_classifier(steps=QUALITY[preset_name]["classifier_steps"], device=device)
        self.references = {}
        test = load_images("mnist-subset", "test")
        feats, preds = classifier_outputs(self.classifier, test.images)
        self.references["grey 28px"] = feats  # the grey test digits' features, reused as that kind's reference
        noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        self.report = {"classifier_test_accuracy": float((preds == test.labels).float().mean()),
                       "noise_fid": sample_quality(self.classifier, noise, feats)["fid"], "floor_fid": {}}

    def reference(self, data: dict) -> torch.Tensor:
        """Test-split features for this kind of data; its floor (500 training digits of the same kind) recorded."""
        key = f"{'binarised' if data.get('binarize') else 'grey'} {data.get('size', 28)}px"
        if key not in self.references:
            self.references[key] = classifier_outputs(self.classifier, to_28(load_images(split="test", **data).images))[0]
        if key not in self.report["floor_fid"]:
            train = load_images(split="train", **data)
            self.report["floor_fid"][key] = sample_quality(self.classifier, to_28(train.images[::9][:500]),
                                                           self.references[key])["fid"]
        return self.references[key]

    def score(self, images: torch.Tensor, labels: torch.Tensor | None, data: dict) -> dict:
        """Classifier FID against the test digits of this kind; class accuracy where labels were asked for."""
        quality = sample_quality(self.classifier, to_28(images), self.reference(data), labels)
        quality.pop("n")  # the report states the sample count once
        return quality


@torch.no_grad()
def draw(sample_fn, n: int, n_classes: int, device, batch: int = 100) -> tuple:
    """n samples from sample_fn(count, labels, generator) -> images, in chunks of `batch`, all from one seeded
    generator; labels 0, 1, ... in turn (class-balanced), None for an unconditional model (n_classes 0).
    Returns (images, labels)."""
    labels = torch.arange(n) % n_classes if n_classes else None
    generator = torch.Generator().manual_seed(0)
    images = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        chunk = labels[start:start + count].to(device) if labels is not None else None
        images.append(sample_fn(count, chunk, generator).float().cpu())
    return torch.cat(images), labels


def nll_entry(model, data: dict) -> dict:
    """Test NLL in nats per image, and what it is over (pixels, or the tokens of a token model)."""
    if not hasattr(model, "nll"):
        return {}
    test = load_images(split="test", **data)
    over = f"{model.seq_len} tokens" if hasattr(model, "tokenizer") else f"{math.prod(test.shape)} pixels"
    return {"nll": dataset_nll(model, test, batch_size=100), "nll_over": over}


def speculative_rows(preset_name: str, repeats: int, checkpoints: dict, device, models: str = "fresh",
                     yardstick=None, samples: int = 0, previews: dict | None = None) -> list:
    """Every speculative variant against plain KV-cached sampling, batch 1, the mean over the same
    seeds (the work depends on what gets accepted, so a best-of would favour lucky seeds). With trained
    models, `yardstick()` (made on first call) scores `samples` samples of each variant."""
    target, target_path = build("token", preset_name, checkpoints, device, models)
    draft, draft_path = build("draft", preset_name, checkpoints, device, models)
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
        rows.append(dict(paradigm="speculative", variant=label, batch=1, passes=round(passes, 1),
                         seconds_per_batch=seconds, images_per_second=1 / seconds, acceptance=accept,
                         trained=bool(target_path and draft_path)))
        if yardstick is not None and rows[-1]["trained"] and samples:
            images, labels = draw(lambda k, y, g: target.to_images(run_one(y, g)[0]), samples, target.n_classes, device)
            rows[-1].update(yardstick().score(images, labels, quality_data("speculative", target)))
            if previews is not None:
                previews[("speculative", label)] = images[:20]
    return rows


def run(paradigms, preset_name: str, batches, repeats: int, checkpoints: dict, device=None, models: str = "fresh",
        samples: int | None = None, previews: dict | None = None, progress: bool = False) -> dict:
    """Time every paradigm's variants at every batch size; with trained models also score their samples
    (`samples` per variant, default by preset; 0: speed only). Returns the report (rows, ratios, yardstick);
    a `previews` dict gets the first 20 scored samples of each variant (classes 0-9 twice)."""
    device = pick_device(device)
    unknown = sorted(set(paradigms) - set(VARIANTS) - {"speculative"})
    if unknown:
        raise ValueError(f"no benchmark for {unknown}; choose from {list(VARIANTS) + ['speculative']}")
    if models not in ("fresh", "notebooks", "train"):
        raise ValueError(f"models must be fresh, notebooks or train, got {models!r}")
    samples = QUALITY[preset_name]["samples"] if samples is None else samples
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    made = []  # the yardstick, made on first use: its classifier takes minutes to train on a CPU

    def yardstick() -> Yardstick:
        if not made:
            made.append(Yardstick(preset_name, device))
        return made[0]

    rows = []
    for name in progress_bar(paradigms, progress, desc="bench"):
        if name == "speculative":
            rows += speculative_rows(preset_name, repeats, checkpoints, device, models, yardstick, samples, previews)
            continue
        model, path = build(name, preset_name, checkpoints, device, models)
        trained = path is not None
        data = quality_data(name, model)
        likelihood = nll_entry(model, data) if trained else {}
        for label, kwargs in VARIANTS[name]:
            quality = {}
            if trained and samples and label not in SAME_SAMPLES:
                images, labels = draw(lambda k, y, g: model.sample(k, y, generator=g, **kwargs), samples,
                                      model.config.n_classes, device)
                quality = yardstick().score(images, labels, data)
                if previews is not None:
                    previews[(name, label)] = images[:20]
            for batch in batches:
                seconds = time_sampler(model, batch, repeats, device, **kwargs)
                rows.append(dict(paradigm=name, variant=label, batch=batch, passes=passes_per_image(name, model, kwargs),
                                 seconds_per_batch=seconds, images_per_second=batch / seconds, trained=trained,
                                 **quality, **likelihood))
                if name == "mar":
                    rows[-1]["head_passes"] = kwargs["num_iter"] * kwargs["diffusion_steps"]
    lookup = {(r["paradigm"], r["variant"], r["batch"]): r["seconds_per_batch"] for r in rows}
    ratios = []
    for title, slow_p, slow_v, fast_p, fast_v in RATIOS:
        for batch in batches:
            if (slow_p, slow_v, batch) in lookup and (fast_p, fast_v, batch) in lookup:
                ratios.append(dict(ratio=title, batch=batch,
                                   speedup=lookup[(slow_p, slow_v, batch)] / lookup[(fast_p, fast_v, batch)]))
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "preset": preset_name, "repeats": repeats, "models": models, "samples": samples, "rows": rows,
            "ratios": ratios, "yardstick": made[0].report if made else None}


def _cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else ""


# what each paradigm's rows are, in words, for tables and charts
TITLES = {"pixelgpt": "pixel transformer (14x14, binary)", "pixel": "Gated PixelCNN", "token": "raster token GPT",
          "var": "VAR", "maskgit": "MaskGIT", "mar": "MAR", "speculative": "speculative decoding of the token GPT"}


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
    parser = argparse.ArgumentParser(prog="python -m minigen.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["smoke", "cpu", "gpu"], default=None, help="model sizes (default: detected)")
    parser.add_argument("--paradigms", nargs="*", default=list(VARIANTS) + ["speculative"],
                        help=f"subset of {list(VARIANTS) + ['speculative']} (speculative: batch 1; its acceptance "
                             "means something only with trained models: --models notebooks, or --checkpoint "
                             "token=... and draft=...)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row; the best one is kept")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="use trained weights for a paradigm (repeatable)")
    parser.add_argument("--models", choices=["fresh", "notebooks", "train"], default="fresh",
                        help="fresh: untrained weights, speed only; notebooks: the checkpoints notebooks 00-07 leave in "
                             "data/ (trained now where missing); train: trained now with the preset's recipe "
                             "(cached in data/bench/). Trained models also get FID, class accuracy and NLL")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per scored variant (default: 50 smoke, 500 cpu/gpu; 0: speed only)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--markdown", action="store_true", help="also print the summary as a Markdown table")
    args = parser.parse_args(argv)
    try:
        if any("=" not in item for item in args.checkpoint):
            raise ValueError(f"--checkpoint takes NAME=PATH, got {args.checkpoint}")
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        if any(b < 1 for b in args.batches) or args.repeats < 1:
            raise ValueError("batches and repeats must be positive")
        report = run(args.paradigms, preset(args.preset), args.batches, args.repeats, checkpoints, args.device,
                     args.models, args.samples)
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
