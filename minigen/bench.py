"""`python -m minigen.bench`: every paradigm's sampling cost and sample quality, side by side in one run.

Cost: sequential network passes per image and images per second at each batch size; times are measured side by
side on one device in one process, so ratios are meaningful even where absolute times are not. Quality (for
trained models): classifier FID and class accuracy of class-balanced samples (minigen.metrics: a digit-domain
Frechet distance, not Inception FID) and the test NLL where the paradigm has a likelihood. Models come from
--checkpoint NAME=PATH, else by --models: `fresh` (untrained weights of the preset's sizes: speed only, the work
per pass does not depend on the weights), `notebooks` (the weights notebooks 00-07 and 11-13 use, found as their
train_or_load finds them: the finished checkpoint in data/, else the shipped weights; trained now, saying so, where
neither is there) or `train` (trained now with the preset's recipe, cached in data/bench/).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import torch

from minigen import continuous_speculative as cspd
from minigen import registry
from minigen import speculative as spec
from minigen import speculative_variants as variants
from minigen.checkpoints import read_checkpoint
from minigen.cli import train
from minigen.data import data_dir
from minigen.metrics import SampleScorer, Yardstick, nll_entry, quality_data, to_28  # noqa: F401 (notebook 09)
from minigen.nn import progress_bar
from minigen.report import format_report, markdown_table, ratios, row, summary  # noqa: F401 (notebook 09)
from minigen.roofline import timed
from minigen.train import device_name, pick_device, seed_everything
from minigen.train import preset as choose_preset


@dataclass(frozen=True)
class Paradigm:
    """One row of the benchmark's table: adding a paradigm to the benchmark is adding one."""

    title: str  # what its rows are, in words, for tables and charts
    notebook: str  # the checkpoint its notebook leaves in data/ as NOTEBOOK_PRESET.pt (--models notebooks)
    variants: tuple  # sampler variants to time, as (label, sample kwargs); the first is the reference


CACHE = (("KV cache", dict(use_cache=True)), ("recompute", dict(use_cache=False)))
# MAR: K = num_iter transformer passes, each followed by S sequential calls of the denoising head
MAR = tuple((f"K={k} S={s}", dict(num_iter=k, diffusion_steps=s)) for k, s in [(16, 50), (16, 10), (8, 50)])
DD = (("1 step", dict(steps=1)), ("2 steps", dict(steps=2)))  # the distilled student's one or two passes
PARADIGMS = {  # in the course's order, the order of the tables whatever order the run had
    "pixelgpt": Paradigm("pixel transformer (14x14, binary)", "00_pixelgpt", CACHE),
    "pixelcnn": Paradigm("Gated PixelCNN", "01_pixelcnn_binary", (("windowed", {}),)),
    "token": Paradigm("raster token GPT", "03_token", CACHE),
    "var": Paradigm("VAR", "04_var", CACHE),
    "maskgit": Paradigm("MaskGIT", "05_maskgit", (("T=8", dict(num_iter=8)), ("T=49", dict(num_iter=49)))),
    "mar": Paradigm("MAR", "06_mar", MAR),
    "flowar": Paradigm("FlowAR", "11_flowar", (("25 steps", dict(flow_steps=25)), ("10 steps", dict(flow_steps=10)))),
    "xar": Paradigm("xAR (noisy context)", "11_xar", (("25 steps", dict(flow_steps=25)),)),
    "nar": Paradigm("next-neighbour AR (NAR)", "12_nar", (("KV cache", {}),)),
    "dd": Paradigm("distilled decoding (DD) of the token GPT", "12_dd", DD),
}
# speculative decoding at batch 1 only (rows of a batch advance together, so larger batches gain nothing): each
# sampler as (label, fn(target, draft, labels, generator) -> (tokens, trace)); plain first, with no trace
SPECULATIVE = [
    ("plain", lambda t, d, y, g, **kw: (t.sample_tokens(len(y), y, generator=g, **kw)[0], None)),
    ("exact g=3", lambda t, d, y, g, **kw: spec.speculative_sample(t, d, len(y), y, gamma=3, generator=g, **kw)),
    ("jacobi w=8", lambda t, d, y, g, **kw: variants.jacobi_sample(t, len(y), y, window=8, generator=g, **kw)),
    ("lantern d=.2", lambda t, d, y, g: variants.lantern_sample(t, d, len(y), y, gamma=4, delta=0.2, generator=g)),
    ("multi k=3", lambda t, d, y, g: variants.multi_draft_sample(t, d, len(y), y, drafts=3, gamma=3, generator=g)),
    ("gsd w=.15", lambda t, d, y, g: variants.gsd_sample(t, d, len(y), y, gamma=4, p_window=0.15, generator=g)),
]
CONTINUOUS = [  # notebook 13: the causal MAR and its draft, the path rule
    ("plain", lambda t, d, y, g: (t.sample(len(y), y, generator=g, return_tokens=True), None)),
    (
        "path g=3",
        lambda t, d, y, g: cspd.continuous_speculative_sample(t, d, len(y), y, generator=g, return_tokens=True),
    ),
]
FAMILIES = {"speculative": ("token", "draft", SPECULATIVE), "cspd": ("cmar", "cmar_draft", CONTINUOUS)}
# --compile adds these: the same samplers with every pass compiled on a static KV cache (nn.compiled_blocks);
# they draw the same tokens as their eager rows, so their samples are not scored again
COMPILED = {"token": ("compiled", dict(compile=True)), "pixelgpt": ("compiled", dict(compile=True))}
SPECULATIVE_COMPILED = [
    (f"{label} compiled", lambda t, d, y, g, fn=fn: fn(t, d, y, g, compile=True)) for label, fn in SPECULATIVE[:3]
]
TITLES = {name: p.title for name, p in PARADIGMS.items()}
TITLES.update(speculative="speculative decoding of the token GPT", cspd="continuous speculative decoding (causal MAR)")
NOTEBOOK_CHECKPOINTS = {name: p.notebook for name, p in PARADIGMS.items()}
NOTEBOOK_CHECKPOINTS.update(draft="07_draft", cmar="13_cmar", cmar_draft="13_cmar_draft")
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
    ("FlowAR 25 steps vs MAR K=16 S=50", "mar", "K=16 S=50", "flowar", "25 steps"),
    ("xAR 25 steps vs MAR K=16 S=50", "mar", "K=16 S=50", "xar", "25 steps"),
    ("NAR (13 passes) vs raster token GPT (KV cache)", "token", "KV cache", "nar", "KV cache"),
    ("DD 1 step vs raster token GPT (KV cache)", "token", "KV cache", "dd", "1 step"),
] + [(f"{f} {label} vs plain", f, "plain", f, label) for f in FAMILIES for label, _ in FAMILIES[f][2][1:]]
RATIOS += [
    ("token: compiled vs eager (KV cache)", "token", "KV cache", "token", "compiled"),
    ("pixelgpt: compiled vs eager (KV cache)", "pixelgpt", "KV cache", "pixelgpt", "compiled"),
    ("speculative: plain compiled vs plain", "speculative", "plain", "speculative", "plain compiled"),
] + [
    (f"speculative {label} vs plain compiled", "speculative", "plain compiled", "speculative", label)
    for label, _ in SPECULATIVE_COMPILED[1:]
]
SAME_SAMPLES = {"recompute", "compiled"}  # variants drawing the same samples as the first one (tested): not scored
SAMPLES = {"smoke": 50, "cpu": 500, "gpu": 500}  # class-balanced samples per scored variant, by preset
MODELS = ("fresh", "notebooks", "train")


def build(name: str, preset_name: str, checkpoints: dict, device, models: str = "fresh"):
    """(model, where its weights came from: a checkpoint path, "shipped:STEM", or None for fresh weights): the
    checkpoint given for `name`, else by `models` fresh weights, the notebook's (registry.finished_weights), or one
    trained now (tokenizer or teacher first) with its recipe into data/bench/NAME-PRESET/model.pt, reused once done."""
    if name in checkpoints:
        return registry.load_model(checkpoints[name], device=device), checkpoints[name]
    if models == "fresh":
        seed_everything(0)
        return registry.recipe(name, preset_name)["model"].to(device).eval(), None
    path = data_dir() / "bench" / f"{name}-{preset_name}" / "model.pt"
    if models == "notebooks":
        stem = f"{NOTEBOOK_CHECKPOINTS[name]}_{preset_name}"
        found = registry.finished_weights(stem, registry.recipe(name, preset_name)["steps"], device)
        if found is not None:
            return found
        print(f"{name}: no weights of its notebook ({stem}): using {path}")
    if registry.kind(name) == "student":  # it learns from its teacher's samples: the teacher first, as here
        teacher, _ = build(registry.teacher(name), preset_name, checkpoints, device, models)
        return registry.student_trainer(name)(teacher, preset_name, path, device)[0], str(path)
    if not path.exists() or read_checkpoint(path)["step"] < registry.recipe(name, preset_name)["steps"]:
        train(name, preset_name, path.parent, device=device, n=20)
    return registry.load_model(path, device=device), str(path)


def time_sampler(model, batch: int, repeats: int, device, **kwargs) -> tuple[float, dict]:
    """Seconds per call of model.sample(batch, ...): the best of `repeats` calls (the least disturbed one; the
    mean would carry whatever else the machine was doing). The warm-up call before them returns its trace,
    which counts the sequential network passes ("passes"; MAR adds its denoising head's "head_passes")."""
    labels = torch.arange(batch) % model.config.n_classes if model.config.n_classes else None
    _, trace = model.sample(batch, labels, generator=torch.Generator().manual_seed(0), return_trace=True, **kwargs)
    generators = [torch.Generator().manual_seed(r + 1) for r in range(repeats)]
    seconds = [timed(device, model.sample, batch, labels, generator=g, **kwargs)[0] for g in generators]
    return min(seconds), trace


def paradigm_rows(
    name: str, preset_name: str, batches, repeats: int, checkpoints: dict, device, models, score, compile=False
):
    """Every variant of one paradigm at every batch size (and its compiled one, if it has one and compile=True);
    a trained model's samples are scored by `score(key, sample_fn, n_classes, data)` (once per variant) and its
    test NLL added."""
    model, path = build(name, preset_name, checkpoints, device, models)
    trained = path is not None
    data = quality_data(name, model)
    likelihood = nll_entry(model, data) if trained else {}
    rows = []
    variants = PARADIGMS[name].variants + ((COMPILED[name],) if compile and name in COMPILED else ())
    for label, kwargs in variants:
        quality = {}
        if trained and label not in SAME_SAMPLES:
            sample_fn = lambda k, y, g: model.sample(k, y, generator=g, **kwargs)
            quality = score((name, label), sample_fn, model.config.n_classes, data)
        for batch in batches:
            seconds, trace = time_sampler(model, batch, repeats, device, **kwargs)
            heads = {"head_passes": trace["head_passes"]} if "head_passes" in trace else {}
            passes = trace["passes"]
            rows.append(row(name, label, batch, passes, seconds, trained=trained, **quality, **likelihood, **heads))
    return rows


def speculative_rows(
    family: str, preset_name: str, repeats: int, checkpoints: dict, device, models: str, score, compile: bool = False
) -> list:
    """Every sampler of a speculative family (FAMILIES) against plain KV-cached sampling, batch 1, the mean over the
    same seeds (the work depends on what gets accepted, so a best-of would favour lucky seeds); with trained
    models, scored by `score`. compile=True adds the token GPT's compiled rows, warmed up on ten other seeds
    first: each new pass length compiles once."""
    target_name, draft_name, samplers = FAMILIES[family]
    target, target_path = build(target_name, preset_name, checkpoints, device, models)
    draft, draft_path = build(draft_name, preset_name, checkpoints, device, models)
    trained = bool(target_path and draft_path)
    inputs = lambda seed: (torch.tensor([seed % 10], device=device), torch.Generator().manual_seed(seed))
    seeds = range(1, max(repeats, 10) + 1)
    rows = []
    for label, fn in samplers + (SPECULATIVE_COMPILED if compile and family == "speculative" else []):
        run_one = lambda y, g: fn(target, draft, y, g)  # -> (tokens, trace or None)
        for seed in range(100, 110) if label.endswith("compiled") else (0,):  # warm-up
            run_one(*inputs(seed))
        timings = [timed(device, run_one, *inputs(seed)) for seed in seeds]
        traces = [trace for _, (_, trace) in timings]
        seconds = fmean(elapsed for elapsed, _ in timings)
        passes = round(fmean(trace["target_passes"] if trace else target.seq_len for trace in traces), 1)
        acceptance = fmean(trace["acceptance"] if trace else float("nan") for trace in traces)
        rows.append(row(family, label, 1, passes, seconds, acceptance=acceptance, trained=trained))
        if trained and not label.endswith("compiled"):
            sample_fn = lambda k, y, g: target.to_images(run_one(y, g)[0])
            rows[-1].update(score((family, label), sample_fn, target.n_classes, registry.data_spec(target_name)))
    return rows


def run(
    *,
    paradigms,
    preset: str,
    batches,
    repeats: int,
    checkpoints: dict | None = None,
    device=None,
    models: str = "fresh",
    samples: int | None = None,
    previews: dict | None = None,
    progress: bool = False,
    compile: bool = False,
) -> dict:
    """Time every paradigm's variants at every batch size; with trained models also score their samples
    (`samples` per variant, default by preset; 0: speed only); compile=True adds the compiled rows of the raster
    GPTs and of plain, exact and Jacobi speculative sampling. Returns the report (rows, ratios, yardstick);
    a `previews` dict gets the first 20 scored samples of each variant (classes 0-9 twice)."""
    if set(paradigms) - set(TITLES):
        raise ValueError(f"no benchmark for {sorted(set(paradigms) - set(TITLES))}; choose from {list(TITLES)}")
    if preset not in SAMPLES:
        raise ValueError(f"preset must be one of {list(SAMPLES)}, got {preset!r}")
    if models not in MODELS:
        raise ValueError(f"models must be fresh, notebooks or train, got {models!r}")
    if not batches or any(b < 1 for b in batches) or repeats < 1:
        raise ValueError("batches and repeats must be positive")
    samples = SAMPLES[preset] if samples is None else samples
    device, checkpoints = pick_device(device), checkpoints or {}
    score = SampleScorer(preset, device, samples, previews)
    rows = []
    for name in progress_bar(paradigms, progress, desc="bench"):
        if name in FAMILIES:
            rows += speculative_rows(name, preset, repeats, checkpoints, device, models, score, compile)
        else:
            rows += paradigm_rows(name, preset, batches, repeats, checkpoints, device, models, score, compile)
    setup = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version()}
    settings = {"preset": preset, "repeats": repeats, "models": models, "samples": samples, "compile": compile}
    measured = {"rows": rows, "ratios": ratios(rows, RATIOS, batches), "yardstick": score.report}
    titles = {name: TITLES[name] for name in TITLES if name in paradigms}  # in the course's order
    return {**setup, **settings, **measured, "titles": titles}


def main(argv=None) -> int:
    raw = argparse.RawDescriptionHelpFormatter  # keeps the module docstring's lines
    parser = argparse.ArgumentParser(prog="python -m minigen.bench", description=__doc__, formatter_class=raw)
    paradigms_help = f"subset of {list(TITLES)} (speculative: batch 1, its acceptance only with trained models)"
    samples_help = f"samples per scored variant (default by preset: {SAMPLES}; 0: speed only)"
    parser.add_argument("--preset", choices=list(SAMPLES), default=None, help="model sizes (default: detected)")
    parser.add_argument("--paradigms", nargs="*", default=list(TITLES), help=paradigms_help)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row; the best one is kept")
    checkpoint_help = "use trained weights for a paradigm (repeatable)"
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help=checkpoint_help)
    parser.add_argument("--models", choices=MODELS, default="fresh", help="where models come from (see above)")
    parser.add_argument("--samples", type=int, default=None, help=samples_help)
    parser.add_argument("--device", default=None)
    compile_help = "add compiled rows: token and pixel GPT, plain/exact/Jacobi speculative (compiles first)"
    parser.add_argument("--compile", action="store_true", help=compile_help)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--markdown", action="store_true", help="also print the summary as a Markdown table")
    args = parser.parse_args(argv)
    try:
        if any("=" not in item for item in args.checkpoint):
            raise ValueError(f"--checkpoint takes NAME=PATH, got {args.checkpoint}")
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        preset = choose_preset(args.preset)
        models = dict(paradigms=args.paradigms, models=args.models, checkpoints=checkpoints, device=args.device)
        models["compile"] = args.compile
        report = run(**models, preset=preset, batches=args.batches, repeats=args.repeats, samples=args.samples)
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
