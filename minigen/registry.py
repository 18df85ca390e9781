"""Names the CLI, the benchmark and checkpoints use for minigen's models.

Each paradigm module exposes a model class (with a `Config` dataclass), a `PRESETS`
dict (smoke / cpu / gpu: config overrides, steps, batch size, learning rate) and a
`DATA` dict (arguments for `minigen.data.load_images`). A module whose data are not
images (AR-Net) sets `DATA = None` and provides `cli_train(...)` for the CLI instead.
Registering a paradigm is one line in `MODELS` below.
"""
from __future__ import annotations

import dataclasses
import importlib

# CLI name -> (module, class)
MODELS = {
    "pixelgpt": ("minigen.pixel_ar", "PixelGPT"),
    "arnet": ("minigen.arnet", "ARNet"),
}


def names() -> list[str]:
    return sorted(MODELS)


def _module(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(names())}")
    return importlib.import_module(MODELS[name][0])


def model_class(key: str):
    """The class for a checkpoint's model key ('module.Class'); only registered classes load."""
    for module_name, class_name in MODELS.values():
        if key == f"{module_name}.{class_name}":
            return getattr(importlib.import_module(module_name), class_name)
    raise ValueError(f"checkpoint model {key!r} is not a registered minigen model")


def recipe(name: str, preset: str) -> dict:
    """Everything needed to train `name` at `preset`: model, data kwargs, fit kwargs."""
    module = _module(name)
    cls = getattr(module, MODELS[name][1])
    if preset not in module.PRESETS:
        raise ValueError(f"preset must be one of {sorted(module.PRESETS)}, got {preset!r}")
    spec = module.PRESETS[preset]
    config = dataclasses.replace(cls.Config(), **spec["config"])
    return {
        "module": module,
        "model": cls(config),
        "data": dict(module.DATA) if module.DATA is not None else None,
        "steps": spec["steps"],
        "batch_size": spec["batch_size"],
        "lr": spec["lr"],
    }
