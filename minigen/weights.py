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

from minigen.files import interrupts_deferred, writable_folder, write_atomically

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


def _staged(path: Path, dtype, trained_on, unfinished: bool) -> tuple[str, dict, dict]:
    """(stem, tensors to write, manifest entry without file and SHA) for one checkpoint; ValueError if it is not a
    minigen checkpoint, or is an unfinished run and `unfinished` is False."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise OSError(f"cannot read {path}: {err.strerror or err}") from err
    except Exception as err:  # whatever torch raises for a damaged file, reported as bad input
        raise ValueError(f"{path} is corrupt or not a checkpoint ({_why(err)})") from err
    if not isinstance(state, dict) or not {"model", "config", "state_dict", "step"} <= state.keys():
        raise ValueError(f"{path} is not a minigen checkpoint")
    planned = (state.get("training") or {}).get("steps")
    if isinstance(planned, int) and state["step"] < planned and not unfinished:
        raise ValueError(
            f"{path} is an unfinished run (step {state['step']} of {planned}): finish it (train ... --resume), "
            "or export it anyway with --unfinished"
        )
    weights = state.get("ema") or state["state_dict"]
    entry = {
        "model": state["model"],
        "config": state["config"],
        "step": int(state["step"]),
        "preset": next((p for p in ("smoke", "cpu", "gpu") if path.stem.endswith(f"_{p}")), None),
        "ema": bool(state.get("ema")),
        "dtype": str(dtype).removeprefix("torch."),
        "trained_on": trained_on,
        "history": thin(state.get("history") or {}),
    }
    return path.stem, {k: _cast(v, dtype) for k, v in weights.items()}, entry


def export(
    checkpoints: list[Path],
    out_dir: Path | None = None,
    dtype=torch.float16,
    trained_on: str | None = None,
    unfinished: bool = False,
):
    """Write each checkpoint's EMA weights (else its weights) as a `dtype` file into `out_dir` (default
    weights_dir()) and its entry into the manifest there; returns the manifest. Integer buffers keep their dtype.

    All or nothing, like git: every checkpoint is read and checked and every file written aside first; only then
    are the files and the manifest renamed into place, with Ctrl-C held back for those few renames. A bad
    checkpoint, an unreadable manifest, a full disk or an interrupt leaves the folder as it was."""
    out_dir = Path(out_dir) if out_dir is not None else weights_dir()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"cannot export into {out_dir}: it is a file, not a folder")
    writable_folder(out_dir)
    manifest = read_manifest(out_dir, strict=True)  # entries of checkpoints not named here stay
    staged = [_staged(Path(path), dtype, trained_on, unfinished) for path in checkpoints]  # nothing written yet
    if len({stem for stem, _, _ in staged}) < len(staged):
        raise ValueError("two checkpoints have the same file name: each file stem names one shipped model")
    staged = [_share_tokenizer(stem, tensors, entry, staged, manifest, out_dir) for stem, tensors, entry in staged]
    moves = []  # (temporary, final)
    try:
        for stem, tensors, entry in staged:
            final = out_dir / f"{stem}.pt"
            tmp = write_atomically(out_dir / f".{stem}.export.pt", lambda t, tensors=tensors: torch.save(tensors, t))
            manifest[stem] = {"file": final.name, "sha256": sha256(tmp), **entry}
            moves.append((tmp, final))
        for entry in manifest.values():  # a tokenizer exported alongside: its digest is known now
            if entry.get("tokenizer_weights") and not entry.get("tokenizer_sha256"):
                entry["tokenizer_sha256"] = manifest[entry["tokenizer_weights"]]["sha256"]
        # one line per model: a re-export shows in git as the lines of the models that changed
        lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(manifest.items()))
        text = "{\n" + lines + "\n}\n" if lines else "{}\n"
        moves.append((write_atomically(out_dir / ".manifest.export.json", lambda t: t.write_text(text)), None))
        _commit(moves, out_dir / MANIFEST)
    finally:
        for tmp, _ in moves:
            tmp.unlink(missing_ok=True)
    for (_, final), (stem, _, _) in zip(moves, staged):
        print(f"{stem} -> {final} ({final.stat().st_size / 1e3:.0f} kB)")
    return manifest


def _share_tokenizer(stem, tensors: dict, entry: dict, staged: list, manifest: dict, out_dir: Path):
    """A token model carries its frozen tokenizer's tensors ("tokenizer.*"). When a tokenizer with the same config
    and exactly these tensors ships in the same folder (or is exported with it), leave them out and name that
    tokenizer in the entry's "tokenizer_weights": every model trained on notebook 06's autoencoder would otherwise
    ship its own copy of it. Returns (stem, tensors, entry), changed or not."""
    plain = lambda config: json.loads(json.dumps(config))  # tuples and their JSON lists compare equal
    own = {k.removeprefix("tokenizer."): v for k, v in tensors.items() if k.startswith("tokenizer.")}
    wanted = plain((entry.get("config") or {}).get("tokenizer"))
    if not own or not isinstance(wanted, dict):
        return stem, tensors, entry
    candidates = {s: (e, t) for s, t, e in staged if s != stem}
    for other, other_entry in manifest.items():
        path = out_dir / Path(str(other_entry.get("file", ""))).name
        if other not in candidates and other != stem and plain(other_entry.get("config")) == wanted and path.is_file():
            candidates[other] = (other_entry, lambda path=path: torch.load(path, map_location="cpu", weights_only=True))
    for other, (other_entry, other_tensors) in sorted(candidates.items()):
        if plain(other_entry.get("config")) != wanted or other_entry.get("tokenizer_weights"):
            continue
        theirs = other_tensors() if callable(other_tensors) else other_tensors
        same = theirs.keys() == own.keys() and all(
            theirs[k].dtype == v.dtype and torch.equal(theirs[k], v) for k, v in own.items()
        )
        if same:
            kept = {k: v for k, v in tensors.items() if not k.startswith("tokenizer.")}
            # the tokenizer file's digest (filled in by export when it is written in the same export)
            return stem, kept, {**entry, "tokenizer_weights": other, "tokenizer_sha256": other_entry.get("sha256")}
    return stem, tensors, entry


def _commit(moves: list, manifest_path: Path):
    """Rename every staged file onto its place, the manifest last, with Ctrl-C held back; if a rename fails, put
    back what was there."""
    moves = [(tmp, final or manifest_path) for tmp, final in moves]
    backups = []
    with interrupts_deferred():
        try:
            for tmp, final in moves:
                backup = final.with_name(f".{final.name}.before-export")
                if final.exists():
                    os.replace(final, backup)
                backups.append((final, backup))
                os.replace(tmp, final)
        except BaseException:
            for final, backup in reversed(backups):
                if backup.exists():
                    os.replace(backup, final)
                else:
                    final.unlink(missing_ok=True)
            raise
        for _, backup in backups:
            backup.unlink(missing_ok=True)


# --- lookup and loading -------------------------------------------------------------------------------


def read_manifest(folder: Path | None = None, strict: bool = False) -> dict:
    """The manifest in `folder` (default weights_dir()): {stem: entry}, each entry checked (check_entry); an entry
    that fails is left out with one line saying why. {} when there is no manifest; one that cannot be read is
    left out with one line too, or, with strict=True (before writing over it), raises ValueError."""
    path = Path(folder or weights_dir()) / MANIFEST
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(manifest, dict):
            raise ValueError("it is not a JSON object")
    except (OSError, ValueError) as err:
        reason = f"{path} cannot be read ({_why(err)})"
        if strict:
            raise ValueError(f"{reason}: mend or remove it first, or every entry in it would be lost") from err
        print(f"ignoring the shipped weights: {reason}")
        return {}
    good = {}
    for stem, entry in manifest.items():
        reason = check_entry(entry)
        if reason is None:
            good[stem] = entry
        elif strict:
            raise ValueError(f"{path}: the entry {stem!r} is malformed ({reason}): mend or remove it first")
        else:
            print(f"ignoring the shipped weights {stem}: its manifest entry is malformed ({reason})")
    return good


ENTRY_FIELDS = {  # field: (types it may have, what it is)
    "file": ((str,), "a file name"),
    "sha256": ((str,), "a hex digest"),
    "model": ((str,), "a model key"),
    "config": ((dict, type(None)), "a dict or null"),
    "step": ((int,), "an integer"),
    "preset": ((str, type(None)), "a preset name or null"),
    "ema": ((bool,), "true or false"),
    "dtype": ((str,), "a dtype name"),
    "trained_on": ((str, type(None)), "a string or null"),
    "history": ((dict,), "a dict"),
}


def check_entry(entry) -> str | None:
    """Why a manifest entry is malformed, or None: every field present with its type, a 64-digit SHA-256, a plain
    file name (never a path out of the folder), a step >= 0, per-step history series as lists of numbers."""
    if not isinstance(entry, dict):
        return f"it is a {type(entry).__name__}, not a dict"
    for field, (types, what) in ENTRY_FIELDS.items():
        value = entry.get(field)
        if field not in entry or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{field} must be {what}, got {value!r:.60}"
    if len(entry["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in entry["sha256"]):
        return "sha256 must be 64 hex digits"
    if Path(entry["file"]).name != entry["file"] or not entry["file"].endswith(".pt"):
        return f"file must be a .pt file name in the folder, got {entry['file']!r:.60}"
    if entry["step"] < 0:
        return f"step must be >= 0, got {entry['step']}"
    if not isinstance(entry.get("tokenizer_weights", ""), str):
        return f"tokenizer_weights must be the stem of a shipped tokenizer, got {entry['tokenizer_weights']!r:.60}"
    if entry.get("tokenizer_weights") and not isinstance(entry.get("tokenizer_sha256"), str):
        return "tokenizer_weights needs the tokenizer file's tokenizer_sha256"
    for key, series in entry["history"].items():
        numbers = isinstance(series, list) and all(isinstance(x, (int, float)) for x in series)
        if key != "precision" and not numbers and not (key == "seconds" and isinstance(series, (int, float))):
            return f"history[{key!r}] must be a list of numbers"
    return None


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


def _file(stem: str, entry: dict) -> Path:
    return weights_dir() / Path(str(entry.get("file") or f"{stem}.pt")).name  # never a path out of the folder


def _unusable(path: Path, entry: dict, whose: str = "") -> str | None:
    """Why the shipped file at `path` cannot be used for `entry` (missing, or not the file it names), or None;
    `whose` names the file in the reason when it is not the model's own."""
    what = f"{whose}{path.name}" if whose else "the file"
    if not path.is_file():
        return f"{what} is missing"
    if sha256(path) != entry.get("sha256"):
        return f"{'the SHA-256 of ' + what if whose else 'its SHA-256'} does not match the manifest"
    return None


def load_shipped(model: nn.Module, stem: str, min_steps: int = 0) -> dict | None:
    """Load the weights shipped for `stem` into `model` and return their training history; None when none are
    shipped or they do not fit (the reason printed in one line naming the file). Never raises for a bad file."""
    entry = shipped(stem)
    if entry is None:
        return None
    path = _file(stem, entry)
    try:  # the first problem found, before anything is loaded
        step = int(entry.get("step") or 0)
        shared = entry.get("tokenizer_weights")  # its tokenizer's tensors live in that tokenizer's own file
        shared_entry = shipped(shared) if shared else None
        reason = (
            mismatch(model, entry.get("model"), entry.get("config"))
            or (f"trained {step} steps, fewer than the {min_steps} asked for" if step < min_steps else None)
            or _unusable(path, entry)
            or (f"its tokenizer's weights {shared!r} are not shipped" if shared and shared_entry is None else None)
            or (_unusable(_file(shared, shared_entry), shared_entry, "its tokenizer's file ") if shared else None)
            or (
                f"its tokenizer's weights {shared!r} changed since it was exported (export it again)"
                if shared and shared_entry.get("sha256") != entry.get("tokenizer_sha256")
                else None
            )
        )
        if reason is None:
            weights, own = torch.load(path, map_location="cpu", weights_only=True), model.state_dict()
            if shared and isinstance(weights, dict):
                tokenizer = torch.load(_file(shared, shared_entry), map_location="cpu", weights_only=True)
                weights.update({f"tokenizer.{k}": v for k, v in tokenizer.items()})
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
