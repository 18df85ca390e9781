"""Bad input and faults through the public API: each is refused early, with a message naming the argument
or path, and leaves no partial file behind. (The command line's faults are in test_cli_faults.py.)"""

import dataclasses
import pickle

import pytest
import torch

from minigen import speculative_variants as SV
from minigen.data import DownloadError, download
from minigen.pixel_ar import GatedPixelCNN, PixelCNNConfig, PixelGPT, PixelGPTConfig
from minigen.registry import load_model
from minigen.token_ar import TokenGPT, TokenGPTConfig
from minigen.tokenizers import VQConfig
from minigen.train import CheckpointError, save_checkpoint


def tiny_token_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    vq = dict(dataclasses.asdict(VQConfig(channels=8, n_res=1, latent_dim=4, n_codes=16)))
    return TokenGPT(TokenGPTConfig(tokenizer=vq, n_layer=1, n_head=2, n_embd=16, dropout=0.0, **kw)).eval()


# --- half-written files ---------------------------------------------------------------------


def test_a_failed_save_leaves_neither_the_file_nor_its_temporary(tmp_path):
    model = PixelGPT(PixelGPTConfig(image_size=4, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local lambda cannot be pickled
        save_checkpoint(tmp_path / "model.pt", model, extra={"unpicklable": lambda: None})
    assert list(tmp_path.iterdir()) == []


def test_offline_download_keeps_the_users_existing_file(tmp_path):
    dest = tmp_path / "train-images-idx3-ubyte.gz"
    dest.write_bytes(b"an older copy")  # its checksum differs from the one asked for
    with pytest.raises(DownloadError, match="offline"):
        download("http://127.0.0.1:9/" + dest.name, dest, "0" * 64, timeout=5)
    assert dest.read_bytes() == b"an older copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]  # and no .part file


def test_a_checkpoint_with_an_impossible_config_is_a_checkpoint_error_naming_the_file(tmp_path):
    model = PixelGPT(PixelGPTConfig(image_size=4, n_layer=1, n_head=2, n_embd=16))
    path = tmp_path / "bad.pt"
    save_checkpoint(path, model)
    state = torch.load(path, weights_only=True)
    state["config"]["n_head"] = 5  # 16 is not divisible by 5
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(path)


# --- bad data -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [(float("nan"), "NaN"), (float("inf"), "NaN or infinite"), (200.0, r"\[0, 1\]"), (-0.5, r"\[0, 1\]")],
)
def test_images_outside_0_1_or_not_finite_are_refused_by_every_model(value, message):
    images = torch.rand(2, 1, 28, 28)
    images[1, 0, 3, 4] = value
    pixelcnn = GatedPixelCNN(PixelCNNConfig(channels=8, n_layer=2, head_channels=8))
    with pytest.raises(ValueError, match=message):
        pixelcnn.loss((images, torch.tensor([0, 1])))
    pixelgpt = PixelGPT(PixelGPTConfig(image_size=28, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=message):
        pixelgpt.loss((images, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=message):
        tiny_token_gpt().loss((images, torch.tensor([0, 1])))


def test_labels_that_do_not_match_the_batch_are_refused():
    model = tiny_token_gpt()
    tokens = torch.zeros(3, 49, dtype=torch.long)
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        model.loss((tokens, torch.tensor([0, 1])))


# --- sampling arguments ---------------------------------------------------------------------


def test_guidance_without_labels_is_refused():
    model = tiny_token_gpt()
    with pytest.raises(ValueError, match="cfg_scale=2.0.*needs class labels"):
        model.sample(2, None, cfg_scale=2.0)
    model.sample(2, None, cfg_scale=1.0)  # no guidance asked for: fine


def test_lantern_refuses_neighbours_outside_the_vocabulary():
    target, draft = tiny_token_gpt(0), tiny_token_gpt(1)
    with pytest.raises(ValueError, match=r"neighbours must hold code ids in \[0, 16\)"):
        SV.lantern_sample(target, draft, 1, [3], neighbours=torch.full((16, 2), 16))
    with pytest.raises(ValueError, match=r"neighbours must be integer code ids of shape \(16, k\)"):
        SV.lantern_sample(target, draft, 1, [3], neighbours=torch.zeros(8, 2, dtype=torch.long))


def test_lantern_never_outputs_a_token_the_warped_target_rules_out():
    """Relaxed acceptance may move mass between look-alike codes, but not onto a code whose warped target
    probability is zero (here: outside the target's top-k)."""
    torch.manual_seed(0)
    target, draft = tiny_token_gpt(0), tiny_token_gpt(1)
    torch.nn.init.normal_(target.head.weight, std=1.0)
    torch.nn.init.normal_(draft.head.weight, std=1.0)
    neighbours = SV.codebook_neighbours(torch.randn(16, 3), 4)
    tokens, _ = SV.lantern_sample(
        target,
        draft,
        30,
        torch.arange(30) % 10,
        gamma=3,
        delta=0.5,
        top_k=3,
        neighbours=neighbours,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        logits = target(tokens, torch.arange(30) % 10)  # (30, 49, V): the distribution each token came from
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == tokens[..., None]).any(-1).all(), "a token outside the target's top-k was output"


# --- AR-Net ---------------------------------------------------------------------------------


def test_arnet_and_classic_ar_refuse_what_they_cannot_use():
    import numpy as np

    from minigen.arnet import ARNet, ARNetConfig, ClassicAR, generate_ar, sparse_ar_coeffs

    w = sparse_ar_coeffs({1: 0.5, 2: -0.2})
    series = generate_ar(w, 300, seed=0)
    for model in (ClassicAR.fit(series, 2), ARNet(ARNetConfig(p=2))):
        for bad in (np.nan, np.inf):
            history = series.copy()
            history[-1] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                model.forecast(history, 5)
        for horizon in (-2, 0, 2.5):
            with pytest.raises(ValueError, match="horizon"):
                model.forecast(series, horizon)
        assert model.forecast(series, 3).shape == (3,)
    net = ARNet(ARNetConfig(p=2))
    for noise in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="noise_std"):
            net.sample(2, length=5, noise_std=noise)
        with pytest.raises(ValueError, match="noise_std"):
            generate_ar(w, 10, noise_std=noise)
    assert net.sample(2, length=5, noise_std=0.0).shape == (2, 5)


# --- the shipped data -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["twenty images", "all black", "truncated", "not an npz"])
def test_a_damaged_subset_file_is_a_clear_error_and_never_replaced(tmp_path, damage):
    import numpy as np

    from minigen import data

    images, labels = data.mnist_subset_arrays()
    path = tmp_path / "mnist_subset.npz"
    if damage == "twenty images":
        np.savez_compressed(path, images=images[:20], labels=labels[:20])
    elif damage == "all black":
        np.savez_compressed(path, images=np.zeros_like(images), labels=labels)
    elif damage == "truncated":
        path.write_bytes(data.SUBSET_FILE.read_bytes()[:10_000])
    else:
        path.write_bytes(b"PK\x03\x04 half a zip")
    before = path.read_bytes()
    message = "corrupt or truncated" if damage in ("truncated", "not an npz") else "expected 5,000 digits"
    with pytest.raises(ValueError, match=message):
        data.mnist_subset_arrays(path)
    assert path.read_bytes() == before  # nothing rebuilt from something else
    with pytest.raises(FileNotFoundError, match="reinstall"):
        data.mnist_subset_arrays(tmp_path / "missing.npz")
