"""Datasets for minigen: an offline MNIST default, verified downloads, and synthetic sets.

- "mnist-subset": 5,000 MNIST digits shipped inside minigen itself (no network),
  split deterministically into 4,500 train / 500 test with 50 test images per class.
- "mnist", "fashion-mnist": the full sets, downloaded on first use into data/ and
  checked by SHA-256; a download is written to a temporary file and renamed only
  when its checksum matches, so no half file is ever left behind.
- BinaryPatterns: tiny binary images whose exact entropy is known, for learning tests.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

OFFLINE_HINT = 'load_images("mnist-subset") works offline: it reads the digits shipped inside minigen'

# SHA-256 of the gzip files as distributed (the MNIST and Fashion-MNIST authors' files).
REMOTE = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}
DATASETS = ("mnist-subset", "mnist", "fashion-mnist")
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
}


class DownloadError(RuntimeError):
    """A dataset file could not be fetched (offline?) or failed its checksum."""


def data_dir() -> Path:
    """Where downloads, caches and checkpoints live: $MINIGEN_DATA, else the repo's data/."""
    env = os.environ.get("MINIGEN_DATA")
    if env:
        path = Path(env)
    else:
        repo_data = Path(__file__).resolve().parents[1] / "data"
        path = repo_data if repo_data.is_dir() else Path.home() / ".cache" / "minigen"
    named = " ($MINIGEN_DATA)" if env else ""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"the data folder {path}{named} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the data folder {path}{named}: {err.strerror or err}") from err
    return path


# --- downloads ---------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Fetch url to dest unless dest already holds a file with this SHA-256.

    The bytes go to a temporary file in dest's folder and are renamed onto dest only
    after the checksum matches, so an interrupted or corrupt download leaves nothing.
    """
    dest = Path(dest)
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    # a stale or damaged copy stays where it is until a verified download replaces it: offline, nothing is lost
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as err:
                raise DownloadError(f"could not download {url} ({err}). Are you offline? {OFFLINE_HINT}.") from err
        if digest.hexdigest() != sha256:
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, "
                f"got {digest.hexdigest()}; the file was discarded"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzip IDX file (the MNIST format): magic 0x00000800 | dtype, then big-endian dims."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} = {math.prod(dims)} bytes, file has {body.size}")
    return body.reshape(dims)


def fetch_idx_dataset(
    name: str,
    split: str,
    root: Path | None = None,
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of a full IDX dataset, downloading if needed."""
    default_url, default_sums = REMOTE[name]
    base_url, checksums = base_url or default_url, checksums or default_sums
    root = Path(root) if root is not None else data_dir() / name
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        fname = f"{prefix}-{kind}-ubyte.gz"
        arrays.append(read_idx(download(base_url + fname, root / fname, checksums[fname])))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


# --- the offline default -----------------------------------------------------------


# SHA-256 of the subset's uint8 images (5000, 28, 28) followed by its int64 labels (5000,), in that order
MNIST_SUBSET_SHA256 = "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"


def subset_checksum(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


SUBSET_FILE = Path(__file__).resolve().parent / "assets" / "mnist_subset.npz"


def mnist_subset_arrays(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits shipped inside the package: uint8 images (5000, 28, 28) and int64 labels (5000,).
    Checked against a pinned SHA-256 at every load; a damaged file is an error, never silently replaced."""
    path = Path(path) if path is not None else SUBSET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the offline MNIST subset {path} is missing: reinstall minigen")
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"].astype(np.int64)
    except Exception as err:
        raise ValueError(f"the offline MNIST subset {path} is corrupt or truncated ({err}): reinstall minigen") from err
    if images.shape != (5000, 28, 28) or subset_checksum(images, labels) != MNIST_SUBSET_SHA256:
        raise ValueError(
            f"the offline MNIST subset {path} does not hold the expected 5,000 digits (SHA-256 mismatch): "
            "reinstall minigen"
        )
    return images, labels


def split_indices(labels: np.ndarray, test_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: `test_per_class` random images of each class go to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[:test_per_class])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def check_images(images: torch.Tensor, size: int):
    """Fail clearly unless images is a float tensor (B, 1, size, size) of finite values in [0, 1], the input
    every model takes (a NaN would otherwise become level 0, and 200.0 be clamped to 1, without a word)."""
    if not torch.is_tensor(images) or images.dim() != 4 or tuple(images.shape[1:]) != (1, size, size):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected images (B, 1, {size}, {size}), got {shape}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
    values = images.detach()
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise ValueError("images contain NaN or infinite values")
    if values.numel() and (float(values.min()) < 0 or float(values.max()) > 1):
        raise ValueError(
            f"image values must lie in [0, 1], got min {float(values.min()):.4g}, "
            f"max {float(values.max()):.4g} (divide 0-255 pixels by 255)"
        )


class ImageDataset(Dataset):
    """Images as float (N, 1, H, W) in [0, 1] with integer labels; items are (image, label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "", class_names=None):
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images, self.labels = images, labels
        self.name, self.class_names = name, class_names or [str(i) for i in range(10)]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_images(
    name: str = "mnist-subset",
    split: str = "train",
    *,
    binarize: bool = False,
    size: int = 28,
    limit: int | None = None,
) -> ImageDataset:
    """The one loader every notebook uses.

    name: "mnist-subset" (offline default), "mnist" or "fashion-mnist" (downloaded).
    split: "train" or "test". binarize: threshold grey levels at 0.5 (fixed, so the
    binarised view is deterministic). size: 28, or a divisor of 28 (area downsampling,
    e.g. 14 for fast CPU models). limit: keep only the first `limit` images.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size not in (28, 14, 7, 4, 2, 1):
        raise ValueError(f"size must divide 28 (28, 14, 7, ...), got {size}")
    if name == "mnist-subset":
        images, labels = mnist_subset_arrays()
        train_idx, test_idx = split_indices(labels, test_per_class=50, seed=0)
        idx = train_idx if split == "train" else test_idx
        images, labels = images[idx], labels[idx]
    else:
        images, labels = fetch_idx_dataset(name, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    if size != 28:
        x = F.avg_pool2d(x, 28 // size)  # (N, 1, size, size)
    if binarize:
        x = (x > 0.5).float()
    classes = CLASS_NAMES["fashion-mnist" if name == "fashion-mnist" else "mnist"]
    return ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), name=name, class_names=classes)


def make_loader(
    dataset: Dataset, batch_size: int = 64, shuffle: bool = True, seed: int = 0, drop_last: bool = True
) -> DataLoader:
    """A DataLoader with a seeded shuffle, so the same seed gives the same batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last and len(dataset) >= batch_size,
        num_workers=0,
    )


# --- synthetic data with a known distribution --------------------------------------


@dataclass
class BinaryPatterns:
    """Binary images drawn from a known distribution, so a model's loss can be compared
    with the true entropy. A sample picks one of `n_patterns` fixed random prototypes
    (uniformly) and flips each pixel independently with probability `flip`.

    With flip = 0 the entropy is exactly log(n_patterns) nats per image; otherwise it is
    computed by enumerating every image (size * size <= 16, at most 65,536 states).
    """

    size: int = 4  # images are size x size
    n_patterns: int = 8  # number of prototype images
    flip: float = 0.0  # per-pixel flip probability
    seed: int = 0  # which prototypes

    def __post_init__(self):
        if not 1 <= self.size <= 4:
            raise ValueError(f"size must be in 1..4 so entropies stay exact, got {self.size}")
        if not 0 <= self.flip < 0.5:
            raise ValueError(f"flip must lie in [0, 0.5), got {self.flip}")
        n_pixels = self.size * self.size
        if not 1 <= self.n_patterns <= 2**n_pixels:
            raise ValueError(f"n_patterns must be in 1..{2**n_pixels}, got {self.n_patterns}")
        rng = np.random.default_rng(self.seed)
        codes = rng.choice(2**n_pixels, size=self.n_patterns, replace=False)
        bits = (codes[:, None] >> np.arange(n_pixels)[None, :]) & 1  # (K, D)
        self.prototypes = torch.from_numpy(bits.astype(np.float32)).view(-1, 1, self.size, self.size)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 1, size, size) float images in {0, 1}."""
        which = torch.randint(self.n_patterns, (n,), generator=generator)
        x = self.prototypes[which]
        if self.flip > 0:
            flips = torch.rand(x.shape, generator=generator) < self.flip
            x = torch.where(flips, 1 - x, x)
        return x

    def dataset(self, n: int, seed: int = 0) -> ImageDataset:
        x = self.sample(n, torch.Generator().manual_seed(seed))
        return ImageDataset(x, torch.zeros(n, dtype=torch.long), name="binary-patterns", class_names=["0"])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability in nats of images x (N, 1, size, size) -> (N,), computed on the host in float64."""
        flat = x.reshape(x.shape[0], -1).cpu()  # (N, D)
        protos = self.prototypes.reshape(self.n_patterns, -1)  # (K, D)
        dist = (flat[:, None, :] != protos[None, :, :]).sum(-1).double()  # (N, K) Hamming distances
        D = flat.shape[1]
        if self.flip == 0:
            log_lik = torch.where(dist == 0, 0.0, float("-inf"))
        else:
            log_lik = dist * math.log(self.flip) + (D - dist) * math.log(1 - self.flip)
        return torch.logsumexp(log_lik - math.log(self.n_patterns), dim=1)  # (N,)

    def entropy(self) -> float:
        """Exact entropy of one image, in nats."""
        if self.flip == 0:
            return math.log(self.n_patterns)
        D = self.size * self.size
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D))).view(-1, 1, self.size, self.size)
        logp = self.log_prob(states)
        return float(-(logp.exp() * logp).sum())
