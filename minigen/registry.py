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

# CLI name -> (module, class, presets attribute, data attribute)
MODELS = {
    "pixelgpt": ("minigen.pixel_ar", "PixelGPT", "GPT_PRESETS", "GPT_DATA"),
    "pixel": ("minigen.pixel_ar", "GatedPixelCNN", "PRESETS", "DATA"),
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


def names() -> list[str]:
    return sorted(MODELS)


def _module(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(names())}")
    return importlib.import_module(MODELS[name][0])


def model_class(key: str):
    """The class for a checkpoint's model key ('module.Class'); only registered classes load."""
    for module_name, class_name, *_ in MODELS.values():
        if key == f"{module_name}.{class_name}":
            return getattr(importlib.import_module(module_name), class_name)
    raise ValueError(f"checkpoint model {key!r} is not a registered minigen model")


def data_spec(name: str) -> dict | None:
    """The `load_images` arguments of the data `name` trains on (None for non-image models)."""
    module = _module(name)
    data = getattr(module, MODELS[name][3])
    return dict(data) if data is not None else None


def recipe(name: str, preset: str) -> dict:
    """Everything needed to train `name` at `preset`: model, data kwargs, fit kwargs."""
    module = _module(name)
    _, class_name, presets_attr, _ = MODELS[name]
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
