"""Fingerprints of what every sampler draws: a refactoring guard.

Builds each registered generator at the smoke preset from seed 0 (random weights: a sampler's draws can be compared
without trained ones), draws with fixed generators, and hashes the samples; likewise every speculative
variant on the smoke token GPT and draft. Run it before and after a change that should not change any sample:

    python tools/sampler_fingerprints.py --out before.json
    ... change the code ...
    python tools/sampler_fingerprints.py --check before.json

The hashes depend on the torch build and the CPU, so compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

import minigen
from minigen import registry
from minigen.train import seed_everything


def digest(x) -> str:
    if isinstance(x, tuple):
        x = x[0]
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@torch.no_grad()
def fresh(name: str):
    """The smoke-preset model with seeded random weights, perturbed so that its distributions are far from
    uniform: samples then depend on every part of the sampler."""
    seed_everything(0)
    model = registry.recipe(name, "smoke")["model"].eval()
    for p in model.parameters():
        p.add_(torch.randn_like(p), alpha=0.5)
    return model


def paradigm_samplers():
    """(label, fn) for every generator's sampler variants."""
    g = lambda: torch.Generator().manual_seed(1)
    out = []
    for name, variants in {
        "pixelgpt": [dict(use_cache=True), dict(use_cache=False), dict(use_cache=True, cfg_scale=2.0)],
        "pixelcnn": [{}],
        "token": [
            dict(use_cache=True),
            dict(use_cache=False),
            dict(compile=True),  # compiles once (about a minute on 2 CPU cores)
            dict(top_k=20, temperature=0.8),
            dict(cfg_scale=2.0),
        ],
        "var": [dict(use_cache=True), dict(use_cache=False)],
        "maskgit": [dict(num_iter=4), dict(num_iter=8, cfg_scale=2.0)],
        "mar": [dict(num_iter=4, diffusion_steps=5), dict(num_iter=4, diffusion_steps=5, cfg_scale=2.0)],
        "draft": [dict(temperature=0.5)],
    }.items():
        model = fresh(name)
        labels = torch.tensor([3, 7])
        for kwargs in variants:
            out.append((f"{name} {kwargs}", lambda m=model, k=kwargs: m.sample(2, labels, generator=g(), **k)))
    arnet = fresh("arnet")
    out.append(("arnet", lambda: arnet.sample(2, length=50, generator=g())))
    return out


def speculative_samplers():
    target, draft = fresh("token"), fresh("draft")
    y = torch.tensor([3, 7])
    g = lambda: torch.Generator().manual_seed(2)
    return [
        ("speculative gamma=3", lambda: minigen.speculative_sample(target, draft, 2, y, gamma=3, generator=g())),
        ("speculative cfg", lambda: minigen.speculative_sample(target, draft, 2, y, cfg_scale=2.0, generator=g())),
        ("jacobi random", lambda: minigen.jacobi_sample(target, 2, y, window=4, generator=g())),
        ("jacobi left", lambda: minigen.jacobi_sample(target, 2, y, window=4, init="left", generator=g())),
        ("jacobi above", lambda: minigen.jacobi_sample(target, 2, y, window=4, init="above", generator=g())),
        ("lantern", lambda: minigen.lantern_sample(target, draft, 2, y, delta=0.2, generator=g())),
        ("multi-draft", lambda: minigen.multi_draft_sample(target, draft, 2, y, drafts=3, gamma=3, generator=g())),
    ]


def fingerprints() -> dict:
    return {label: digest(fn()) for label, fn in paradigm_samplers() + speculative_samplers()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the fingerprints here (JSON)")
    parser.add_argument("--check", help="compare with fingerprints written earlier; exit 1 on any difference")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same reduction order run to run
    prints = fingerprints()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(prints, f, indent=1)
    if not args.check:
        print(json.dumps(prints, indent=1))
        return 0
    with open(args.check) as f:
        before = json.load(f)
    same = [label for label in before if prints.get(label) == before[label]]
    for label in before:
        print(f"{'same' if label in same else 'DIFFERENT':9} {label}")
    print(f"{len(same)}/{len(before)} samplers draw the same samples")
    return 0 if len(same) == len(before) else 1


if __name__ == "__main__":
    sys.exit(main())
