"""Names the CLI, the benchmark and checkpoints use for minigen's models.

Each entry names a module, a model class (with a `Config` dataclass), a presets dict (smoke / cpu / gpu: config
overrides, steps, batch size, learning rate, optional EMA decay), a data dict (arguments for
`minigen.data.load_images`, None for a model that is not trained on images) and the model's kind:

- "generator": draws images with `sample(n, labels, ...)`;
- "tokenizer": encodes and decodes images (`evaluate`, `reconstruct`), the ground a token model stands on;
- "series": a time-series model (AR-Net), trained by the CLI on a generated AR process;
- "student": draws images like a generator, but learns from a teacher generator's samples, not from images
  (distilled decoding: its module names the teacher in `TEACHER`).

A module whose models sit on a tokenizer (token_ar) names it in `TOKENIZER`; the CLI trains or reuses that one
first. Registering a paradigm is one line in `MODELS` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from minigen.checkpoints import CheckpointError, load_weights, read_checkpoint
from minigen.data import data_dir
from minigen.train import pick_device
from minigen.weights import load_shipped, model_key, read_manifest, shipped, weights_dir

KINDS = ("generator", "tokenizer", "series", "student")


@dataclass(frozen=True)
class Entry:
    """Where a registered model lives and what kind of model it is."""

    module: str  # the module that defines the class, its data (`data`) and its TOKENIZER
    class_name: str  # the model class, with a `Config` dataclass
    kind: str  # one of KINDS
    presets: str = "PRESETS"  # the attribute holding the smoke / cpu / gpu recipes
    data: str = "DATA"  # the attribute holding the `load_images` arguments (None: not images)
    presets_module: str | None = None  # where the presets live when not in `module`

    @property
    def key(self) -> str:
        """The model key its checkpoints carry ('module.Class')."""
        return f"{self.module}.{self.class_name}"


MODELS = {
    "pixelgpt": Entry("minigen.pixel_ar", "PixelGPT", "generator", presets="GPT_PRESETS", data="GPT_DATA"),
    "pixelcnn": Entry("minigen.pixel_ar", "GatedPixelCNN", "generator"),
    "vq": Entry("minigen.tokenizers", "VQVAE", "tokenizer"),
    "token": Entry("minigen.token_ar", "TokenGPT", "generator"),
    "nar": Entry("minigen.neighbour_ar", "NAR", "generator"),  # next-neighbour AR on the token GPT's tokens
    "dd": Entry("minigen.distilled", "DDStudent", "student"),  # distilled decoding: the token GPT in one or two passes
    "maskgit": Entry("minigen.masked_ar", "MaskGIT", "generator"),
    "msvq": Entry("minigen.tokenizers", "MultiScaleVQ", "tokenizer", presets="MSVQ_PRESETS"),
    "var": Entry("minigen.scale_ar", "VAR", "generator"),
    "ae": Entry("minigen.tokenizers", "ContinuousAE", "tokenizer", presets="AE_PRESETS"),  # MAR's continuous tokenizer
    "mar": Entry("minigen.diffusion_ar", "MAR", "generator"),
    # notebook 13: a causal MAR (target) and a thin one (draft) for continuous speculative decoding
    "cmar": Entry("minigen.continuous_speculative", "CausalMAR", "generator"),
    "cmar_draft": Entry("minigen.continuous_speculative", "CausalMAR", "generator", presets="DRAFT_PRESETS"),
    "flowar": Entry("minigen.flow_ar", "FlowAR", "generator"),
    "xar": Entry("minigen.flow_ar", "XAR", "generator", presets="XAR_PRESETS"),
    # the small draft GPT of notebook 07: a TokenGPT on the same data, with speculative decoding's presets
    "draft": Entry(
        "minigen.token_ar", "TokenGPT", "generator", presets="DRAFT_PRESETS", presets_module="minigen.speculative"
    ),
    "arnet": Entry("minigen.arnet", "ARNet", "series"),
}

ALIASES = {"pixel": "pixelcnn"}  # older names that still work


def names() -> list[str]:
    return sorted(MODELS)


def resolve(name: str) -> str:
    """The registered name for `name` or one of its aliases."""
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(names())}")
    return name


def kind(name: str) -> str:
    """What the registered model `name` is: "generator", "tokenizer" or "series"."""
    return MODELS[resolve(name)].kind


def kind_of(model: nn.Module) -> str:
    """The kind of a model object, found by its class key (as in its checkpoints)."""
    kind = kind_of_key(model_key(model))
    if kind is None:
        raise ValueError(f"{model_key(model)} is not a registered minigen model")
    return kind


def kind_of_key(key) -> str | None:
    """The kind of the model a checkpoint's or manifest's key ('module.Class') names; None if it is not registered."""
    return next((entry.kind for entry in MODELS.values() if entry.key == key), None)


def _module(name: str):
    return importlib.import_module(MODELS[resolve(name)].module)


def model_class(key: str):
    """The class for a checkpoint's model key ('module.Class'); only registered classes load."""
    for entry in MODELS.values():
        if key == entry.key:
            return getattr(importlib.import_module(entry.module), entry.class_name)
    raise ValueError(f"checkpoint model {key!r} is not a registered minigen model")


def data_spec(name: str) -> dict | None:
    """The `load_images` arguments of the data `name` trains on (None for non-image models)."""
    data = getattr(_module(name), MODELS[resolve(name)].data)
    return dict(data) if data is not None else None


def teacher(name: str) -> str | None:
    """The registered name of the model a student learns from (its module's TEACHER); None for the others."""
    return getattr(_module(name), "TEACHER", None) if kind(name) == "student" else None


def student_trainer(name: str):
    """A student's `train_student(teacher, preset, path, device) -> (student, history)`, from its module."""
    if kind(name) != "student":
        raise ValueError(f"{name} is a {kind(name)}, not a student")
    return _module(name).train_student


def recipe(name: str, preset: str) -> dict:
    """Everything needed to train `name` at `preset`: model, data kwargs, fit kwargs."""
    entry = MODELS[resolve(name)]
    module = _module(name)
    cls = getattr(module, entry.class_name)
    presets = getattr(importlib.import_module(entry.presets_module or entry.module), entry.presets)
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    spec = presets[preset]
    config = dataclasses.replace(cls.Config(), **spec["config"])
    return {
        "module": module,
        "model": cls(config),
        "data": data_spec(name),
        "steps": spec["steps"],
        "batch_size": spec["batch_size"],
        "lr": spec["lr"],
        "ema_decay": spec.get("ema"),  # None: no EMA weights
        "tokenizer": getattr(module, "TOKENIZER", None),  # registered name of the tokenizer it needs
    }


def load_model(path, device=None, prefer_ema: bool = True):
    """Rebuild a registered model from a checkpoint: class from the registry, config, weights."""
    state = read_checkpoint(path)
    try:
        cls = model_class(state["model"])
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    try:  # a config the class does not take, or one its model cannot be built from (n_embd % n_head != 0)
        model = cls(cls.Config(**state["config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config does not fit {state['model']}: {err}") from err
    load_weights(model, state, prefer_ema, path)
    return model.to(pick_device(device)).eval()


def load_model_shipped(stem: str, device=None) -> nn.Module | None:
    """Rebuild a registered model from the weights minigen ships for `stem` (e.g. "03_token_cpu"; see
    minigen.weights): class from the registry, config from the manifest. None, with the reason printed in one
    line, when none are shipped or they do not load; the history is `minigen.weights.shipped(stem)["history"]`."""
    entry = shipped(stem)
    if entry is None:
        print(f"no shipped weights named {stem!r}")
        return None
    try:  # an unregistered key, or a config the class does not take
        cls = model_class(entry.get("model"))
        model = cls(cls.Config(**entry["config"]))
    except (KeyError, TypeError, ValueError) as err:
        print(f"ignoring the shipped weights {stem}: its model cannot be built ({err})")
        return None
    if load_shipped(model, stem) is None:
        return None
    return model.to(pick_device(device)).eval()


def load_model_or_shipped(checkpoint, device=None) -> nn.Module:
    """A generator to sample from (`python -m minigen sample`): the checkpoint file `checkpoint`, else the shipped
    weights of that name ("03_token_cpu", as `weights list` names them). A shipped file's own path works too: it
    holds only tensors, its manifest entry the rest. ValueError naming what ships when it is neither."""
    manifest, path = read_manifest(), Path(checkpoint)
    if path.is_file() and not (path.stem in manifest and path.resolve().parent == weights_dir().resolve()):
        try:
            return load_model(path, device=device)
        except CheckpointError as err:
            if path.stem in manifest:  # a copy of a shipped file, away from its manifest
                hint = f"; if it is a copy of the shipped weights {path.stem}, name them: sample {path.stem}"
                raise CheckpointError(f"{err}{hint}") from err
            raise
    stem = path.stem if path.is_file() else str(checkpoint)
    kinds = {name: kind_of_key(entry["model"]) for name, entry in sorted(manifest.items())}
    if stem not in manifest:
        models = ", ".join(name for name, kind in kinds.items() if kind not in (None, "tokenizer")) or "none"
        raise ValueError(
            f"no checkpoint file {checkpoint} and no shipped weights of that name; shipped models that sample: "
            f"{models} (python -m minigen weights list)"
        )
    if kinds[stem] in (None, "tokenizer"):
        what = (
            "a tokenizer, which has no sample()"
            if kinds[stem]
            else f"a {manifest[stem]['model']}, which does not sample"
        )
        raise ValueError(f"the shipped weights {stem} hold {what}; sample from a generator")
    model = load_model_shipped(stem, device=device)  # None, with the reason printed, if they do not load
    if model is None:
        raise ValueError(f"the shipped weights {stem} do not load (the line above says why)")
    return model


def finished_weights(stem: str, steps: int, device=None) -> tuple[nn.Module, str] | None:
    """(model, source) as a notebook's train_or_load(model, data/STEM.pt, steps=steps) finds it without training:
    the finished checkpoint data/STEM.pt, else the weights minigen ships for STEM (unless MINIGEN_TRAIN=1); None when
    neither is there (reasons printed, one line each). Each is rebuilt from its own config: a token model's config
    holds the tokenizer its notebook attached, which a recipe's fresh model does not know. source is the
    checkpoint's path or "shipped:STEM" (see weights_record)."""
    path = data_dir() / f"{stem}.pt"
    if path.exists():
        try:
            state = read_checkpoint(path)
            if state["step"] < steps:
                raise CheckpointError(f"trained {state['step']} steps, fewer than the recipe's {steps}")
            return load_model(path, device=device), str(path)
        except CheckpointError as err:
            print(f"ignoring {path}: {err}")
    entry = shipped(stem)
    if entry is None or os.environ.get("MINIGEN_TRAIN", "") not in ("", "0"):
        return None
    if int(entry.get("step") or 0) < steps:
        print(f"ignoring the shipped weights {stem}: trained {entry.get('step')} steps, fewer than {steps}")
        return None
    model = load_model_shipped(stem, device=device)  # None, with the reason printed, if they do not load
    return None if model is None else (model, f"shipped:{stem}")


def weights_record(source: str) -> dict:
    """Step and training history of the weights at `source` (a checkpoint path or "shipped:STEM")."""
    if source.startswith("shipped:"):
        entry = shipped(source.removeprefix("shipped:")) or {}
        return {"step": entry.get("step"), "history": entry.get("history") or {}}
    state = read_checkpoint(source)
    return {"step": state["step"], "history": state.get("history") or {}}
