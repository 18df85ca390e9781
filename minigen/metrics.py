"""Likelihood metrics shared by every paradigm: nats per image and bits per dimension."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from minigen.train import to_device


def bits_per_dim(nll_nats, dims: int):
    """Convert a negative log-likelihood in nats per image into bits per dimension."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    return nll_nats / (dims * math.log(2))


@torch.no_grad()
def dataset_nll(model, dataset: Dataset, batch_size: int = 256, device=None) -> float:
    """Mean model.nll over a whole dataset, in nats per image."""
    if not hasattr(model, "nll"):
        raise TypeError(f"{type(model).__name__} defines no likelihood (.nll)")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        nll = model.nll(to_device(batch, device))
        total += float(nll.sum())
        count += nll.shape[0]
    model.train(was_training)
    return total / count
