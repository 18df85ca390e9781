"""Command line: `python -m minigen train NAME`, `python -m minigen sample CKPT`, `python -m minigen list`.

train writes DIR/model.pt (checkpoint), DIR/samples.png and DIR/metrics.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from minigen import registry
from minigen.data import load_images, make_loader
from minigen.metrics import bits_per_dim, dataset_nll
from minigen.registry import load_model
from minigen.train import device_name, fit, pick_device, preset, seed_everything
from minigen.viz import save_images, save_series


def _sample_labels(model, n: int):
    n_classes = getattr(model.config, "n_classes", 0)
    return torch.arange(n) % n_classes if n_classes else None


def _grid_columns(labels, n: int) -> int:
    """One column per class for conditional samples (labels cycle 0..9), else a square grid."""
    return int(labels.max()) + 1 if labels is not None and n >= 10 else int(math.ceil(math.sqrt(n)))


def cmd_train(args) -> dict:
    preset_name = preset(args.preset)
    seed_everything(args.seed)
    device = pick_device(args.device)
    args.name = registry.resolve(args.name)
    rec = registry.recipe(args.name, preset_name)
    model, steps = rec["model"], args.steps if args.steps is not None else rec["steps"]
    out = Path(args.out or f"runs/{args.name}-{preset_name}")
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(rec["module"], "cli_train"):  # non-image models write their own three files
        metrics = rec["module"].cli_train(model, steps=steps, out=out, device=device, seed=args.seed,
                                          preset_name=preset_name)
        print(json.dumps(metrics, indent=2))
        print(f"wrote {out / 'model.pt'}, {out / 'samples.png'}, {out / 'metrics.json'}")
        return metrics
    if rec["tokenizer"]:
        tokenizer = _tokenizer(rec["tokenizer"], preset_name, out, args)
        config = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "tokenizer"}
        model = type(model).from_tokenizer(tokenizer, **config)
    train_set = load_images(split="train", **rec["data"])
    test_set = load_images(split="test", **rec["data"])
    print(f"training {args.name} | preset {preset_name} | {steps} steps | {device_name(device)}")
    history = fit(model, make_loader(train_set, rec["batch_size"], seed=args.seed), steps=steps, lr=rec["lr"],
                  ema_decay=rec["ema_decay"], device=device, precision=getattr(args, "precision", None),
                  checkpoint=out / "model.pt", resume=args.resume, desc=args.name)
    metrics = {"model": args.name, "preset": preset_name, "device": device_name(device), "steps": steps,
               "precision": history["precision"],
               "train_seconds": round(history["seconds"], 2), "torch": torch.__version__,
               "final_train_loss": history["loss"][-1] if history["loss"] else None}
    if hasattr(model, "nll"):
        nll = dataset_nll(model, test_set)
        metrics["test_nll_nats"] = round(nll, 4)
        if hasattr(model, "tokenizer"):  # a likelihood of tokens, not of pixels
            metrics["test_bits_per_token"] = round(bits_per_dim(nll, model.seq_len), 5)
        else:
            metrics["test_bits_per_dim"] = round(bits_per_dim(nll, math.prod(test_set.shape)), 5)
    if not hasattr(model, "sample"):  # a tokenizer: originals above their reconstructions
        report = model.evaluate(test_set.images)
        metrics["test_mse"] = round(report["mse"], 6)
        if "perplexity" in report:  # a codebook
            metrics.update(test_perplexity=round(report["perplexity"], 2), test_codes_used=round(report["used_fraction"], 4))
        else:  # continuous tokens
            metrics.update(token_mean=round(report["token_mean"], 4), token_std=round(report["token_std"], 4))
        originals = test_set.images[: args.n].to(device)
        save_images(torch.cat([originals, model.reconstruct(originals)]), out / "samples.png",
                    nrow=min(args.n, 16))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))
        print(f"wrote {out / 'model.pt'}, {out / 'samples.png'} (originals, then reconstructions), "
              f"{out / 'metrics.json'}")
        return metrics
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    labels = _sample_labels(model, args.n)
    images = model.sample(args.n, labels, generator=gen)
    metrics["samples_per_second"] = round(args.n / (time.perf_counter() - t0), 3)
    save_images(images, out / "samples.png", nrow=_grid_columns(labels, args.n))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'model.pt'}, {out / 'samples.png'}, {out / 'metrics.json'}")
    return metrics


def _tokenizer(name: str, preset_name: str, out: Path, args):
    """The tokenizer a token model needs: --tokenizer CKPT, else OUT/../NAME-PRESET/model.pt, trained if missing."""
    path = Path(args.tokenizer) if args.tokenizer else out.parent / f"{name}-{preset_name}" / "model.pt"
    if not path.exists():
        if args.tokenizer:
            raise FileNotFoundError(f"tokenizer checkpoint {path} does not exist")
        print(f"no {name} tokenizer at {path}: training it first")
        sub = argparse.Namespace(**{**vars(args), "name": name, "out": str(path.parent), "steps": None,
                                    "resume": False})
        cmd_train(sub)
    print(f"using the {name} tokenizer in {path}")
    return load_model(path, device="cpu")


def cmd_sample(args):
    seed_everything(args.seed)
    model = load_model(args.checkpoint, device=args.device)
    if not hasattr(model, "sample"):
        raise ValueError(f"{args.checkpoint} holds a tokenizer, which has no sample(); sample from a token model")
    gen = torch.Generator().manual_seed(args.seed)
    if not hasattr(model.config, "n_classes"):  # a time-series model: simulate series
        save_series(model.sample(args.n, generator=gen), args.out)
        print(f"wrote {args.n} simulated series to {args.out}")
        return
    labels = torch.tensor(args.labels) if args.labels else _sample_labels(model, args.n)
    if labels is not None and len(labels) != args.n:
        labels = labels.repeat(math.ceil(args.n / len(labels)))[: args.n]
    images = model.sample(args.n, labels, temperature=args.temperature, generator=gen, progress=True)
    save_images(images, args.out, nrow=_grid_columns(None if args.labels else labels, args.n))
    print(f"wrote {args.n} samples to {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minigen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model at a preset; writes model.pt, samples.png, metrics.json")
    p.add_argument("name", choices=registry.names() + sorted(registry.ALIASES), metavar="NAME",
                   help="one of: " + ", ".join(registry.names()))
    p.add_argument("--preset", choices=["smoke", "cpu", "gpu"], default=None,
                   help="default: smoke if MINIGEN_SMOKE=1, else gpu with CUDA, else cpu")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--out", default=None, help="output folder (default runs/NAME-PRESET)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: detected)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="training precision (default: bf16 on recent CUDA GPUs, fp16 on older ones, else fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=64, help="samples drawn for samples.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/model.pt if it exists")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer checkpoint for token models (default: OUT/../vq-PRESET or msvq-PRESET/model.pt, trained if missing)")
    p.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("checkpoint")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--labels", type=int, nargs="*", default=None, help="class labels (cycled to --n)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)
    ls = sub.add_parser("list", help="list the registered models")
    ls.set_defaults(func=lambda a: print("\n".join(registry.names())))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
