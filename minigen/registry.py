"""Names the CLI, the benchmark and checkpoints use for minigen's models.

Each entry names a module, a model class (with a `Config` dataclass), a presets dict
(smoke / cpu / gpu: config overrides, steps, batch size, learning rate, optional EMA decay) and a data dict
(arguments for `minigen.data.load_images`). A module whose data are not images (AR-Net)
has data None and provides `cli_train(...)` for the CLI instead. A module whose models sit on a
tokenizer (token_ar) names it in `TOKENIZER`; the CLI trains or reuses that one first.
Registering a paradigm is one line in `MODELS` below.
"""
from __future__ import annotations

import dataclasses
import importlib

from minigen.train import CheckpointError, load_weights, pick_device, read_checkpoint

# CLI name -> (module, class, presets attribute, data attribute)
MODELS = {
    "pixelgpt": ("minigen.pixel_ar", "PixelGPT", "GPT_PRESETS", "GPT_DATA"),
    "pixelcnn": ("minigen.pixel_ar", "GatedPixelCNN", "PRESETS", "DATA"),
    "vq": ("minigen.tokenizers", "VQVAE", "PRESETS", "DATA"),
    "token": ("minigen.token_ar", "TokenGPT", "PRESETS", "DATA"),
    "maskgit": ("minigen.masked_ar", "MaskGIT", "PRESETS", "DATA"),
    "msvq": ("minigen.tokenizers", "MultiScaleVQ", "MSVQ_PRESETS", "DATA"),
    "var": ("minigen.scale_ar", "VAR", "PRESETS", "DATA"),
    "ae": ("minigen.tokenizers", "ContinuousAE", "AE_PRESETS", "DATA"),  # MAR's continuous tokenizer
    "mar": ("minigen.diffusion_ar", "MAR", "PRESETS", "DATA"),
    "draft": ("minigen.speculative", "TokenGPT", "DRAFT_PRESETS", "DATA"),  # the small draft GPT of notebook 07
    "arnet": ("minigen.arnet", "ARNet", "PRESETS", "DATA"),
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


def _module(name: str):
    return importlib.import_module(MODELS[resolve(name)][0])


def model_class(key: str):
    """The class for a checkpoint's model key ('module.Class'); only registered classes load."""
    for module_name, class_name, *_ in MODELS.values():
        if key == f"{module_name}.{class_name}":
            return getattr(importlib.import_module(module_name), class_name)
    raise ValueError(f"checkpoint model {key!r} is not a registered minigen model")


def data_spec(name: str) -> dict | None:
    """The `load_images` arguments of the data `name` trains on (None for non-image models)."""
    module = _module(name)
    data = getattr(module, MODELS[resolve(name)][3])
    return dict(data) if data is not None else None


def recipe(name: str, preset: str) -> dict:
    """Everything needed to train `name` at `preset`: model, data kwargs, fit kwargs."""
    module = _module(name)
    _, class_name, presets_attr, _ = MODELS[resolve(name)]
    cls, presets = getattr(module, class_name), getattr(module, presets_attr)
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
    try:
        config = cls.Config(**state["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config does not fit {state['model']}: {err}") from err
    model = cls(config)
    load_weights(model, state, prefer_ema, path)
    return model.to(pick_device(device)).eval()
