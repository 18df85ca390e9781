"""Metrics shared by every paradigm: nats per image, bits per dimension, and sample quality for digits
(a small CNN classifier's Frechet distance and class accuracy), with the yardstick the benchmark scores
every paradigm's samples by."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from minigen import registry
from minigen.data import check_images, data_dir, load_images, make_loader
from minigen.train import pick_device, seed_everything, to_device, train_or_load


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


def nll_entry(model, data: dict) -> dict:
    """Test NLL in nats per image, and what it is over (pixels, or the tokens of a token model); empty for a
    model without a likelihood. `data`: the `load_images` arguments of what the model generates."""
    if not hasattr(model, "nll"):
        return {}
    test = load_images(split="test", **data)
    over = f"{model.seq_len} tokens" if hasattr(model, "tokenizer") else f"{math.prod(test.shape)} pixels"
    return {"nll": dataset_nll(model, test, batch_size=100), "nll_over": over}


# --- sample quality for digits: a small classifier as the yardstick ---------------------------------


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits. Its 128-d penultimate features define the "classifier FID"
    (a domain-specific Frechet distance, *not* the Inception FID of the literature) and its
    predictions the class accuracy of class-conditional samples."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        block = lambda i, o: [
            nn.Conv2d(i, o, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        self.body = nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(128, n_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, 28)
        return self.body(2 * images.float() - 1)  # (B, 128)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(images)))  # (B, n_classes)

    def loss(self, batch) -> torch.Tensor:
        images, labels = batch
        if self.training:  # random shifts of up to 2 pixels: 4,500 digits are few
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
            images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
        return F.cross_entropy(self(images), labels)


def digit_classifier(dataset: str = "mnist-subset", steps: int = 2000, device=None, progress: bool = False):
    """The yardstick classifier for `dataset`, trained on its train split on first use and cached in data/."""
    device = pick_device(device)
    seed_everything(0)
    model = DigitClassifier()
    train_or_load(
        model,
        data_dir() / f"classifier_{dataset}.pt",
        make_loader(load_images(dataset, "train"), 64),
        steps=steps,
        lr=2e-3,
        device=device,
        progress=progress,
        desc="classifier",
    )
    return model.to(device).eval()


@torch.no_grad()
def classifier_outputs(classifier: DigitClassifier, images: torch.Tensor, batch_size: int = 500):
    """(features (N, 128), predicted classes (N,)) for images (N, 1, 28, 28), on the CPU."""
    device = next(classifier.parameters()).device
    feats, preds = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device))
        feats.append(f.cpu().double())  # to the host first: MPS has no float64
        preds.append(classifier.out(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets."""
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        shapes = f"{tuple(feats_a.shape)}, {tuple(feats_b.shape)}"
        raise ValueError(f"need two (N, D) feature sets of the same D, got {shapes}")
    if min(len(feats_a), len(feats_b)) < 2:
        raise ValueError("need at least 2 samples in each set")
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD matrix
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def energy_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 200, generator=None) -> tuple[float, float]:
    """Two-sample test of samples x (N, d) and y (M, d) (Szekely's energy distance): E = 2 E|x - y| - E|x - x'| -
    E|y - y'|, zero exactly when the two distributions are equal. Returns (E, p-value), the p-value from
    `permutations` random relabellings of the pooled samples (all of them scored in one matrix product)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected samples (N, d) and (M, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    pooled = torch.cat([x, y]).double()  # (N + M, d)
    dist = torch.cdist(pooled, pooled)  # (N + M, N + M)
    n, total = x.shape[0], pooled.shape[0]
    labels = [torch.arange(total) < n] + [torch.randperm(total, generator=generator) < n for _ in range(permutations)]
    u = torch.stack(labels, 1).double()  # (N + M, 1 + P): column 0 the true split
    xx = (u * (dist @ u)).sum(0)  # sums over pairs within x
    xy = (dist @ u).sum(0) - xx  # pairs across
    yy = dist.sum() - 2 * xy - xx
    m = total - n
    energy = 2 * xy / (n * m) - xx / n**2 - yy / m**2  # (1 + P,)
    p_value = ((energy[1:] >= energy[0]).sum().item() + 1) / (permutations + 1)
    return float(energy[0]), p_value


def sample_quality(
    classifier: DigitClassifier, samples: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None = None
) -> dict:
    """Classifier FID of samples against reference images (N, 1, 28, 28) or their ready features (N, 128),
    and (given the requested labels) the fraction of samples the classifier assigns to the requested class."""
    feats, preds = classifier_outputs(classifier, samples)
    ref_feats = reference if reference.dim() == 2 else classifier_outputs(classifier, reference)[0]
    out = {"fid": frechet_distance(feats, ref_feats), "n": len(samples)}
    if labels is not None:
        out["class_accuracy"] = float((preds == torch.as_tensor(labels).cpu()).float().mean())
    return out


# --- the yardstick: every sample set scored against test digits of its own kind ------------------------

CLASSIFIER_STEPS = {"smoke": 100, "cpu": 2000, "gpu": 2000}  # the yardstick classifier's training per preset


def to_28(images: torch.Tensor) -> torch.Tensor:
    """The classifier reads 28x28: smaller images (the 14x14 pixel transformer) are scaled up by repetition."""
    return images if images.shape[-1] == 28 else F.interpolate(images.float(), size=(28, 28), mode="nearest")


def quality_data(name: str, model) -> dict:
    """`load_images` arguments for the data model `name` generates (the binary or grey PixelCNN alike): the test
    digits of this kind are what its samples and its NLL are measured against."""
    if registry.kind(name) == "student":  # it draws what its teacher draws
        return quality_data(registry.teacher(name), model)
    data = registry.data_spec(name)
    if name == "pixelcnn":
        data["binarize"] = model.config.n_levels == 2
    return data


class Yardstick:
    """The digit classifier and, per kind of data (grey or binarised, 28 or 14 pixels), the test split's
    features; every sample set is scored against the test digits of its own kind."""

    def __init__(self, preset_name: str, device=None):
        if preset_name not in CLASSIFIER_STEPS:
            raise ValueError(f"preset must be one of {sorted(CLASSIFIER_STEPS)}, got {preset_name!r}")
        self.classifier = digit_classifier(steps=CLASSIFIER_STEPS[preset_name], device=device)
        test = load_images("mnist-subset", "test")
        feats, preds = classifier_outputs(self.classifier, test.images)
        self.references = {"grey 28px": feats}  # the grey test digits' features, reused as that kind's reference
        noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        self.report = {
            "classifier_test_accuracy": float((preds == test.labels).float().mean()),
            "noise_fid": sample_quality(self.classifier, noise, feats)["fid"],
            "floor_fid": {},
        }

    def reference(self, data: dict) -> torch.Tensor:
        """Test-split features for this kind of data (`load_images` arguments); its floor (500 training digits
        of the same kind) recorded in the report."""
        key = f"{'binarised' if data.get('binarize') else 'grey'} {data.get('size', 28)}px"
        if key not in self.references:
            test = load_images(split="test", **data)
            self.references[key] = classifier_outputs(self.classifier, to_28(test.images))[0]
        if key not in self.report["floor_fid"]:
            train = load_images(split="train", **data)
            self.report["floor_fid"][key] = sample_quality(
                self.classifier, to_28(train.images[::9][:500]), self.references[key]
            )["fid"]
        return self.references[key]

    def score(self, images: torch.Tensor, labels: torch.Tensor | None, data: dict) -> dict:
        """Classifier FID against the test digits of this kind; class accuracy where labels were asked for."""
        quality = sample_quality(self.classifier, to_28(images), self.reference(data), labels)
        quality.pop("n")  # the report states the sample count once
        return quality


class SampleScorer:
    """Scores the benchmark's sample sets: classifier FID and class accuracy of `samples` class-balanced samples
    per call (none when `samples` is 0), by a Yardstick made on first use (its classifier takes minutes to train
    on a CPU). A `previews` dict gets the first 20 samples of each set (classes 0-9 twice) under its key."""

    def __init__(self, preset_name: str, device, samples: int, previews: dict | None = None):
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.preset_name, self.device, self.samples, self.previews = preset_name, device, samples, previews
        self.yardstick = None

    def __call__(self, key: tuple, sample_fn, n_classes: int, data: dict) -> dict:
        """Scores of `sample_fn(count, labels, generator) -> images` against the test digits of kind `data`."""
        if not self.samples:
            return {}
        if self.yardstick is None:
            self.yardstick = Yardstick(self.preset_name, self.device)
        images, labels = draw(sample_fn, self.samples, n_classes, self.device)
        if self.previews is not None:
            self.previews[key] = images[:20]
        return self.yardstick.score(images, labels, data)

    @property
    def report(self) -> dict | None:
        """The yardstick's own numbers (classifier accuracy, floor and noise FID); None if nothing was scored."""
        return self.yardstick.report if self.yardstick is not None else None


@torch.no_grad()
def draw(sample_fn, n: int, n_classes: int, device, batch: int = 100) -> tuple:
    """n samples from sample_fn(count, labels, generator) -> images, in chunks of `batch`, all from one seeded
    generator; labels 0, 1, ... in turn (class-balanced), None for an unconditional model (n_classes 0).
    Returns (images, labels)."""
    if n < 1 or batch < 1 or n_classes < 0:
        raise ValueError(f"need n >= 1, batch >= 1 and n_classes >= 0, got {n}, {batch}, {n_classes}")
    labels = torch.arange(n) % n_classes if n_classes else None
    generator = torch.Generator().manual_seed(0)
    images = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        chunk = labels[start : start + count].to(device) if labels is not None else None
        images.append(sample_fn(count, chunk, generator).float().cpu())
    return torch.cat(images), labels
