"""Command line: `python -m minigen train NAME`, `python -m minigen sample CKPT|SHIPPED`, `python -m minigen list`,
`python -m minigen weights export CKPT... | list` (the pretrained weights minigen ships, see minigen.weights).

train writes DIR/model.pt (checkpoint), DIR/samples.png and DIR/metrics.json; `train(...)` does the same from
Python (the benchmark trains its models with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minigen import arnet, registry, weights
from minigen.checkpoints import CheckpointError, TrainingInterrupted, read_checkpoint, save_checkpoint
from minigen.data import DownloadError, load_images, make_loader
from minigen.files import writable_folder, write_atomically
from minigen.metrics import bits_per_dim, dataset_nll
from minigen.registry import load_model
from minigen.train import device_name, fit, pick_device, seed_everything
from minigen.train import preset as choose_preset
from minigen.viz import image_file, plot_coefficients, save_images, save_series

# `train arnet`: a sparse AR(10) process (lags 1, 3, 10), fitted with the preset's p lags
TRUE_LAGS = {1: 0.2, 3: 0.3, 10: -0.5}
DESCRIPTION = (
    "minigen's command line: train models, sample from checkpoints or shipped weights, list models and weights."
)
SCALE = 4  # samples.png shows each pixel as a SCALE x SCALE block: a 28x28 digit is 112 pixels wide, not 28


def _sample_labels(model, n: int):
    n_classes = getattr(model.config, "n_classes", 0)
    return torch.arange(n) % n_classes if n_classes else None


def _grid_columns(labels, n: int) -> int:
    """One column per class for conditional samples (labels cycle 0..9), else a square grid."""
    return int(labels.max()) + 1 if labels is not None and n >= 10 else int(math.ceil(math.sqrt(n)))


# --- train --------------------------------------------------------------------------------------------


def train(
    name: str,
    preset: str | None = None,
    out=None,
    *,
    steps: int | None = None,
    device=None,
    seed: int = 0,
    n: int = 64,
    resume: bool = False,
    tokenizer=None,
    precision: str | None = None,
) -> dict:
    """Train the registered model `name` with the recipe of `preset` (default: detected) and return its metrics.

    Writes OUT/model.pt, OUT/samples.png (samples; a tokenizer's originals above their reconstructions; AR-Net's
    coefficients) and OUT/metrics.json; OUT defaults to runs/NAME-PRESET. `steps` overrides the preset's, `n` is the
    number of images in samples.png. A token model's tokenizer is the checkpoint `tokenizer`, else
    OUT/../TOKENIZER-PRESET/model.pt, trained first where missing.
    """
    preset_name = choose_preset(preset)
    name = registry.resolve(name)
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"--steps must be an integer >= 0, got {steps}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--n must be a positive integer, got {n}")
    if registry.kind(name) == "student":
        raise ValueError(
            f"{name} learns from a teacher's samples, not from images: notebook 12 trains it "
            "(minigen.distilled.TeacherPairs and train_or_load); `python -m minigen sample` draws from its checkpoint"
        )
    if registry.kind(name) == "series" and (resume or precision is not None):
        raise ValueError(f"{name} trains in seconds in fp32: --resume and --precision do not apply to it")
    device = pick_device(device)
    seed_everything(seed)  # before the model is built: its initial weights are part of the run
    rec = registry.recipe(name, preset_name)
    model, steps = rec["model"], rec["steps"] if steps is None else steps
    given_tokenizer = _load_tokenizer(tokenizer, rec["tokenizer"]) if tokenizer is not None else None
    out = writable_folder(f"runs/{name}-{preset_name}" if out is None else out, "--out")  # before training, not after
    if not resume and (out / "model.pt").exists() and _unfinished(out / "model.pt"):
        raise ValueError(
            f"{out / 'model.pt'} is an interrupted run ({_unfinished(out / 'model.pt')}): add --resume to continue "
            "it, or remove it to start over"
        )
    caption = ""  # what samples.png shows, where it is not samples
    if registry.kind(name) == "series":
        metrics = _train_series(model, steps=steps, out=out, device=device, seed=seed, preset_name=preset_name)
    else:
        if rec["tokenizer"]:
            tokenizer_model = given_tokenizer or _tokenizer(
                rec["tokenizer"], preset_name, out, device=device, seed=seed, n=n, precision=precision
            )
            config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "tokenizer"}
            model = type(model).from_tokenizer(tokenizer_model, **config)
        metrics = _train_images(
            name,
            model,
            rec,
            preset_name,
            out,
            steps=steps,
            device=device,
            seed=seed,
            n=n,
            resume=resume,
            precision=precision,
        )
        if registry.kind(name) == "tokenizer":
            caption = " (originals, then reconstructions)"
    write_atomically(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'model.pt'}, {out / 'samples.png'}{caption}, {out / 'metrics.json'}")
    return metrics


def _train_images(
    name: str,
    model,
    rec: dict,
    preset_name: str,
    out: Path,
    *,
    steps: int,
    device,
    seed: int,
    n: int,
    resume: bool,
    precision: str | None,
) -> dict:
    """Fit an image model (generator or tokenizer), measure it on the test split, fill samples.png; its metrics."""
    train_set = load_images(split="train", **rec["data"])
    test_set = load_images(split="test", **rec["data"])
    print(f"training {name} | preset {preset_name} | {steps} steps | {device_name(device)}")
    history = fit(
        model,
        make_loader(train_set, rec["batch_size"], seed=seed),
        steps=steps,
        lr=rec["lr"],
        ema_decay=rec["ema_decay"],
        device=device,
        precision=precision,
        checkpoint=out / "model.pt",
        resume=resume,
        desc=name,
    )
    metrics = {
        "model": name,
        "preset": preset_name,
        "device": device_name(device),
        "steps": steps,
        "precision": history["precision"],
        "train_seconds": round(history["seconds"], 2),
        "torch": torch.__version__,
        "final_train_loss": history["loss"][-1] if history["loss"] else None,
    }
    if hasattr(model, "nll"):
        nll = dataset_nll(model, test_set)
        metrics["test_nll_nats"] = round(nll, 4)
        if hasattr(model, "tokenizer"):  # a likelihood of tokens, not of pixels
            metrics["test_bits_per_token"] = round(bits_per_dim(nll, model.seq_len), 5)
        else:
            metrics["test_bits_per_dim"] = round(bits_per_dim(nll, math.prod(test_set.shape)), 5)
    if registry.kind(name) == "tokenizer":  # originals above their reconstructions
        report = model.evaluate(test_set.images)
        metrics["test_mse"] = round(report["mse"], 6)
        if "perplexity" in report:  # a codebook
            metrics.update(
                test_perplexity=round(report["perplexity"], 2), test_codes_used=round(report["used_fraction"], 4)
            )
        else:  # continuous tokens
            metrics.update(token_mean=round(report["token_mean"], 4), token_std=round(report["token_std"], 4))
        originals = test_set.images[:n].to(device)
        pictures = torch.cat([originals, model.reconstruct(originals)])
        save_images(pictures, out / "samples.png", nrow=min(n, 16), scale=SCALE)
        return metrics
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    labels = _sample_labels(model, n)
    images = model.sample(n, labels, generator=gen)
    metrics["samples_per_second"] = round(n / (time.perf_counter() - t0), 3)
    save_images(images, out / "samples.png", nrow=_grid_columns(labels, n), scale=SCALE)
    return metrics


def _tokenizer(name: str, preset_name: str, out: Path, **train_kwargs):
    """The tokenizer `name` a token model needs when none was given: OUT/../NAME-PRESET/model.pt, trained there
    (with `train_kwargs`) if missing, and finished first if an interrupted run left it unfinished."""
    path = out.parent / f"{name}-{preset_name}" / "model.pt"
    if not path.exists():
        print(f"no {name} tokenizer at {path}: training it first")
        train(name, preset_name, path.parent, **train_kwargs)
    elif _unfinished(path):
        print(f"the {name} tokenizer at {path} is unfinished ({_unfinished(path)}): finishing it first")
        train(name, preset_name, path.parent, resume=True, **train_kwargs)
    return _load_tokenizer(path, name)


def _unfinished(path: Path) -> str | None:
    """'step k of N' for a checkpoint of a run that stopped before its last step, else None."""
    state = read_checkpoint(path)
    planned = (state.get("training") or {}).get("steps")
    return f"step {state['step']} of {planned}" if isinstance(planned, int) and state["step"] < planned else None


def _load_tokenizer(path, name: str | None):
    """The tokenizer checkpoint at `path`, checked to hold the kind of tokenizer `name` that the model needs."""
    if name is None:
        raise ValueError("--tokenizer applies only to models trained on a tokenizer's codes")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer checkpoint {path} does not exist")
    tokenizer = load_model(path, device="cpu")
    expected = registry.model_class(registry.MODELS[name].key)
    if type(tokenizer) is not expected:
        raise ValueError(
            f"tokenizer checkpoint {path} holds a {type(tokenizer).__name__}, "
            f"but this model needs a {expected.__name__} ({name!r})"
        )
    print(f"using the {name} tokenizer in {path}")
    return tokenizer


def _train_series(model: arnet.ARNet, *, steps: int, out: Path, device, seed: int, preset_name: str) -> dict:
    """Fit AR-Net and Classic-AR on a generated sparse AR process (TRUE_LAGS); write model.pt and samples.png
    (true and fitted coefficients); return the metrics."""
    spec = arnet.PRESETS[preset_name]
    w = arnet.sparse_ar_coeffs(TRUE_LAGS)
    series = arnet.generate_ar(w, spec["n"], seed=seed)
    split = int(0.8 * len(series))
    train_part, test_part = series[:split], series[split - model.config.p :]
    model = arnet.ARNet(dataclasses.replace(model.config, reg_start=int(0.2 * steps), reg_full=int(0.6 * steps)))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    history = arnet.train_arnet(
        model,
        train_part,
        steps=steps,
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        seed=seed,
        device=device,
        progress=True,
    )
    net_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    classic = arnet.ClassicAR.fit(train_part, model.config.p)
    classic_seconds = time.perf_counter() - t0
    X, Y = arnet.lag_matrix(test_part, model.config.p)
    metrics = {
        "model": "arnet",
        "preset": preset_name,
        "device": device_name(device),
        "steps": steps,
        "torch": torch.__version__,
        "process": f"sparse AR({w.size}), lags {sorted(TRUE_LAGS)}, {spec['n']} samples, unit noise",
        "p": model.config.p,
        "stpe_arnet": round(arnet.stpe(model.coeffs, w), 3),
        "stpe_classic": round(arnet.stpe(classic.coeffs, w), 3),
        "test_mse_arnet": round(float(((model.predict(X)[:, 0] - Y[:, 0]) ** 2).mean()), 5),
        "test_mse_classic": round(float(((classic.predict(X) - Y[:, 0]) ** 2).mean()), 5),
        "fit_seconds_arnet": round(net_seconds, 3),
        "fit_seconds_classic": round(classic_seconds, 4),
    }
    save_checkpoint(out / "model.pt", model, step=steps, history=history)
    fig, ax = plt.subplots(figsize=(9, 3))
    plot_coefficients({"true": w, "Classic-AR": classic.coeffs, "AR-Net": model.coeffs}, ax=ax)
    try:
        write_atomically(out / "samples.png", lambda tmp: fig.savefig(tmp, dpi=80, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return metrics


# --- sample and the parser ----------------------------------------------------------------------------


def cmd_train(args) -> dict:
    options = ("steps", "device", "seed", "n", "resume", "tokenizer", "precision")  # train's keyword arguments
    return train(args.name, args.preset, args.out, **{name: getattr(args, name) for name in options})


def cmd_sample(args):
    if args.n < 1:
        raise ValueError(f"--n must be a positive integer, got {args.n}")
    if args.labels is not None and len(args.labels) > args.n:
        raise ValueError(f"--labels gives {len(args.labels)} labels for --n {args.n} samples")
    out = image_file(args.out)  # before sampling, which can take minutes
    seed_everything(args.seed)
    model = registry.load_model_or_shipped(args.checkpoint, device=args.device)
    kind = registry.kind_of(model)
    if kind == "tokenizer":
        raise ValueError(f"{args.checkpoint} holds a tokenizer, which has no sample(); sample from a token model")
    gen = torch.Generator().manual_seed(args.seed)
    if kind == "series":  # simulate series
        if args.labels is not None or args.temperature is not None:
            raise ValueError(f"{args.checkpoint} holds a time-series model: --labels and --temperature do not apply")
        save_series(model.sample(args.n, generator=gen), out)
        print(f"wrote {args.n} simulated series to {out}")
        return
    labels = torch.tensor(args.labels) if args.labels else _sample_labels(model, args.n)
    if labels is not None and len(labels) != args.n:
        labels = labels.repeat(math.ceil(args.n / len(labels)))[: args.n]
    # the knobs this model's sample() takes: the distilled student and the causal MAR have no temperature
    knobs = inspect.signature(model.sample).parameters
    options = {"generator": gen, **({"progress": True} if "progress" in knobs else {})}
    if "temperature" in knobs:
        options["temperature"] = 1.0 if args.temperature is None else args.temperature
    elif args.temperature is not None:
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, whose sampling has no --temperature")
    images = model.sample(args.n, labels, **options)
    save_images(images, out, nrow=_grid_columns(None if args.labels else labels, args.n), scale=SCALE)
    print(f"wrote {args.n} samples to {out}")


# --- weights ------------------------------------------------------------------------------------------


def cmd_weights(args):
    folder = args.dir if args.dir is not None else weights.weights_dir()
    if args.action == "export":
        weights.export(args.checkpoints, args.dir, trained_on=args.trained_on, unfinished=args.unfinished)
    elif not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (--dir)")
    manifest = weights.read_manifest(args.dir)
    for stem, entry in sorted(manifest.items()):
        print(weights.describe(stem, entry))
    if not manifest:
        print(f"no shipped weights in {folder}")


class _Help(argparse.HelpFormatter):
    """Every option that takes a value ends its help with its default, unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.nargs != 0 and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: train, sample, list and weights (export, list)."""
    parser = argparse.ArgumentParser(prog="python -m minigen", description=DESCRIPTION, formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    add = lambda group, name, text: group.add_parser(name, help=text, description=text, formatter_class=_Help)
    p = add(sub, "train", "train a model at a preset; writes model.pt, samples.png, metrics.json")
    p.add_argument(
        "name",
        choices=registry.names() + sorted(registry.ALIASES),
        metavar="NAME",
        help="one of: " + ", ".join(registry.names()),
    )
    p.add_argument(
        "--preset",
        choices=["smoke", "cpu", "gpu"],
        default=None,
        help="model size and schedule (default: smoke if MINIGEN_SMOKE=1, else gpu with CUDA, else cpu)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--out", default=None, help="output folder (default: runs/NAME-PRESET)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="training precision (default: bf16 on recent CUDA GPUs, fp16 on older ones, else fp32)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initial weights, the data and the samples")
    p.add_argument("--n", type=int, default=64, help="samples drawn for samples.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt if it exists")
    p.add_argument(
        "--tokenizer",
        help="tokenizer checkpoint for token models (default: OUT/../vq-PRESET/model.pt, or msvq-/ae- "
        "for var/mar, trained if missing)",
    )
    p.set_defaults(func=cmd_train)
    s = add(sub, "sample", "draw samples from a checkpoint, or from the weights minigen ships; writes a picture")
    s.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a checkpoint file (train's OUT/model.pt), or the name of shipped weights, e.g. 03_token_cpu "
        "(python -m minigen weights list)",
    )
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--out", default="samples.png", help="the picture to write: PNG, or the format its suffix names")
    s.add_argument(
        "--labels", type=int, nargs="*", help="class labels, at most --n, cycled to --n (default: 0-9 in turn)"
    )
    s.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 1)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda, then mps, then cpu)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples")
    s.set_defaults(func=cmd_sample)
    ls = add(sub, "list", "list the registered models")
    ls.set_defaults(func=lambda a: print("\n".join(registry.names())))
    w = add(sub, "weights", "the pretrained weights minigen ships: export checkpoints into them, list them")
    actions = w.add_subparsers(dest="action", required=True, metavar="ACTION", help="one of:")
    ex = add(actions, "export", "write checkpoints' EMA weights in fp16 and their manifest entries")
    ex.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT", help="checkpoint files to export")
    ex.add_argument(
        "--trained-on", default=f"{os.cpu_count()} CPU cores", help="where they trained (default: %(default)s)"
    )
    ex.add_argument("--unfinished", action="store_true", help="export a run that stopped before its last step")
    wl = add(actions, "list", "list the shipped weights")
    for command in (ex, wl):
        command.add_argument(
            "--dir", type=Path, default=None, help="the weights folder (default: $MINIGEN_WEIGHTS_DIR or the package's)"
        )
        command.set_defaults(func=cmd_weights)
    for command in (p, s, ex):
        command.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except TrainingInterrupted as stop:  # Ctrl-C during training: the last finished step is saved
        again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
        if stop.checkpoint is not None and args.command == "train" and "--out" not in again:
            again += ["--out", str(Path(stop.checkpoint).parent)]
        print(f"{stop}; resume: python -m minigen {' '.join(again)} --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, DownloadError, OSError) as err:
        # bad input, damaged files, the file system: one line naming the cause. Anything else is a bug (in
        # minigen or in a model a learner edited) or the device (out of memory): its traceback is the message.
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
