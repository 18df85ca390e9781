"""Pretrained weights that ship with minigen, so a class can skip training.

`python -m minigen weights export data/*_cpu.pt` writes checkpoints' EMA weights (else their weights) in fp16 into
minigen/pretrained/, with a manifest.json entry per file stem (SHA-256, model key, config, step, thinned history);
`minigen.train.train_or_load` uses them unless MINIGEN_TRAIN=1. This module sits below minigen.train in the import
graph, so it also holds the rule both apply to decide whether saved weights fit a model (`mismatch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from minigen.files import write_atomically

PACKAGE_DIR = Path(__file__).parent / "pretrained"
MANIFEST = "manifest.json"
MAX_POINTS = 300  # per-step series are averaged down to this many points: the manifest stays small
PER_STEP = ("loss", "lr")  # history series with one value per training step (besides "step" itself)


def weights_dir() -> Path:
    """Where shipped weights live: $MINIGEN_WEIGHTS_DIR (tests, a course's own set), else minigen/pretrained/."""
    return Path(os.environ.get("MINIGEN_WEIGHTS_DIR") or PACKAGE_DIR)


def model_key(model: nn.Module) -> str:
    """'module.Class': what checkpoints and shipped weights record to say which model they belong to."""
    return f"{type(model).__module__}.{type(model).__name__}"


def mismatch(model: nn.Module, key: str | None, config: dict | None) -> str | None:
    """Why weights saved for (key, config) do not fit `model`, or None when they do."""
    if key != model_key(model):
        return f"holds a {key!r}, not a {model_key(model)!r}"
    own = getattr(model, "config", None)
    if not dataclasses.is_dataclass(own):
        return None
    # through JSON both ways, as the manifest stores them: a tuple field and its list copy are the same config
    mine = json.loads(json.dumps(dataclasses.asdict(own)))
    theirs = json.loads(json.dumps(config)) if isinstance(config, dict) else {}
    differ = sorted(k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs or mine[k] != theirs[k])
    was = ", ".join(f"{k}={theirs.get(k, '(none)')}" for k in differ)
    now = ", ".join(f"{k}={mine.get(k, '(none)')}" for k in differ)
    return f"was trained with {was}, not this model's {now}" if differ else None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # files of a few MB: one read is fine


def _why(err: Exception) -> str:  # in one line: torch.load's messages on a damaged file run to a dozen
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"


# --- export -------------------------------------------------------------------------------------------


def thin(history: dict, points: int = MAX_POINTS) -> dict:
    """The history with its per-step series averaged over bins down to at most `points` points (each at the last
    step of its bin: the curve keeps its shape); eval points, seconds and precision are kept as they are."""
    steps = list(history.get("step") or [])
    out = {k: v for k, v in history.items() if k != "step" and k not in PER_STEP}
    m = min(len(steps), points)
    bins = [range(i * len(steps) // m, (i + 1) * len(steps) // m) for i in range(m)]
    out["step"] = [steps[b[-1]] for b in bins]
    for k in PER_STEP:
        series = history.get(k) or []
        if len(series) == len(steps):
            out[k] = [float(f"{sum(series[j] for j in b) / len(b):.6g}") for b in bins]
    return out


def _cast(t: torch.Tensor, dtype) -> torch.Tensor:
    """A copy (torch.save then writes only its bytes, not a shared storage) in `dtype` for a floating tensor; an
    integer tensor, or one with values beyond `dtype`'s range (fp16 overflows past 65504), keeps its dtype."""
    cast = t.detach().to(dtype if t.is_floating_point() else t.dtype, copy=True)
    return cast if torch.isfinite(cast).all() or not torch.isfinite(t).all() else t.detach().clone()


def export(checkpoints: list[Path], out_dir: Path | None = None, dtype=torch.float16, trained_on: str | None = None):
    """Write each checkpoint's EMA weights (else its weights) as a `dtype` file into `out_dir` (default
    weights_dir()) and its entry into the manifest there; returns the manifest. Integer buffers keep their dtype."""
    out_dir = Path(out_dir) if out_dir is not None else weights_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)  # entries of checkpoints not named here stay
    for path in map(Path, checkpoints):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise  # a missing or unreadable file says so itself
        except Exception as err:  # whatever torch raises for a damaged file, reported as bad input
            raise ValueError(f"{path} is corrupt or not a checkpoint ({_why(err)})") from err
        if not isinstance(state, dict) or not {"model", "config", "state_dict", "step"} <= state.keys():
            raise ValueError(f"{path} is not a minigen checkpoint")
        weights = state.get("ema") or state["state_dict"]
        tensors = {k: _cast(v, dtype) for k, v in weights.items()}
        file = out_dir / f"{path.stem}.pt"
        write_atomically(file, lambda tmp, tensors=tensors: torch.save(tensors, tmp))
        manifest[path.stem] = {
            "file": file.name,
            "sha256": sha256(file),
            "model": state["model"],
            "config": state["config"],
            "step": int(state["step"]),
            "preset": next((p for p in ("smoke", "cpu", "gpu") if path.stem.endswith(f"_{p}")), None),
            "ema": bool(state.get("ema")),
            "dtype": str(dtype).removeprefix("torch."),
            "trained_on": trained_on,
            "history": thin(state.get("history") or {}),
        }
        print(f"{path} -> {file} ({file.stat().st_size / 1e3:.0f} kB)")
    # one line per model: a re-export shows in git as the lines of the models that changed
    lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(manifest.items()))
    write_atomically(out_dir / MANIFEST, lambda tmp: tmp.write_text("{\n" + lines + "\n}\n" if lines else "{}\n"))
    return manifest


# --- lookup and loading -------------------------------------------------------------------------------


def read_manifest(folder: Path | None = None) -> dict:
    """The manifest in `folder` (default weights_dir()); {} when there is none or it cannot be read."""
    path = Path(folder or weights_dir()) / MANIFEST
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        manifest = f"unreadable ({err})"
    if not isinstance(manifest, dict):
        print(f"ignoring the shipped weights: {path} is {manifest if isinstance(manifest, str) else 'not a dict'}")
        return {}
    return manifest


def shipped(stem: str) -> dict | None:
    """The manifest entry for `stem` (e.g. "03_token_cpu"), or None."""
    entry = read_manifest().get(stem)
    if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
        # JSON has no tuples: give back the config as the dataclass (and dataclasses.asdict) holds it
        entry["config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["config"].items()}
    return entry if isinstance(entry, dict) else None


def describe(stem: str, entry: dict) -> str:
    """E.g. 'cpu-preset weights 03_token_cpu (trained 3000 steps, 330 s on 2 CPU cores)'."""
    seconds = (entry.get("history") or {}).get("seconds")
    took = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    where = f" on {entry['trained_on']}" if entry.get("trained_on") else ""
    preset = f"{entry['preset']}-preset " if entry.get("preset") else ""
    return f"{preset}weights {stem} (trained {entry.get('step')} steps{took}{where})"


def load_shipped(model: nn.Module, stem: str, min_steps: int = 0) -> dict | None:
    """Load the weights shipped for `stem` into `model` and return their training history; None when none are
    shipped or they do not fit (the reason printed in one line naming the file). Never raises for a bad file."""
    entry = shipped(stem)
    if entry is None:
        return None
    path = weights_dir() / Path(str(entry.get("file") or f"{stem}.pt")).name  # never a path out of the folder
    try:  # the first problem found, before anything is loaded
        step = int(entry.get("step") or 0)
        reason = (
            mismatch(model, entry.get("model"), entry.get("config"))
            or (f"trained {step} steps, fewer than the {min_steps} asked for" if step < min_steps else None)
            or (None if path.is_file() else "the file is missing")
            or (None if sha256(path) == entry.get("sha256") else "its SHA-256 does not match the manifest")
        )
        if reason is None:
            weights, own = torch.load(path, map_location="cpu", weights_only=True), model.state_dict()
            shapes = lambda state: {k: v.shape for k, v in state.items()}
            if not isinstance(weights, dict) or shapes(weights) != shapes(own):
                reason = "its tensor names or shapes are not this model's"
            else:  # checked first: load_state_dict copies what fits before it complains about the rest
                model.load_state_dict({k: weights[k].to(v.dtype) for k, v in own.items()}, strict=True)
    except Exception as err:  # a truncated or corrupt file: whatever torch raises, the notebook goes on
        reason = f"it does not load ({_why(err)})"
    if reason is not None:
        print(f"ignoring the shipped weights {path}: {reason}")
        return None
    return entry.get("history") or {}
