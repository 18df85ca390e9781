"""Every model on the device under test (conftest.TEST_DEVICE: the CPU in CI, cuda when tools/device_check.py runs
on a lent GPU): training steps at the device's own precision, sampling, the KV cache against recompute, the
compiled pass against eager, speculative decoding with a generator on the CPU, checkpoints moving between devices."""

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE, tiny_gpt

import minigen
from minigen import registry
from minigen.data import load_images, make_loader
from minigen.speculative import Decoder
from minigen.train import fit, pick_precision, save_checkpoint

GENERATORS = [name for name in registry.names() if registry.kind(name) == "generator"]


def on_device(module) -> bool:
    return all(p.device.type == TEST_DEVICE.type for p in module.parameters())


@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_trains_and_samples_on_the_device(name):
    torch.manual_seed(0)
    recipe = registry.recipe(name, "smoke")
    model, precision = recipe["model"], pick_precision(TEST_DEVICE)
    loader = make_loader(load_images(**recipe["data"], limit=32), 16)
    history = fit(model, loader, steps=3, lr=1e-3, device=TEST_DEVICE, precision=precision, progress=False)
    assert history["precision"] == precision and np.isfinite(history["loss"]).all() and on_device(model)
    labels = torch.arange(2) % max(model.config.n_classes, 1) if model.config.n_classes else None
    images = model.sample(2, labels, generator=torch.Generator().manual_seed(0))  # a CPU generator, as users pass
    assert images.device.type == TEST_DEVICE.type and images.dtype == torch.float32
    assert torch.isfinite(images).all() and 0 <= float(images.min()) and float(images.max()) <= 1


def distributions(model, tokens, **decoder):
    """The next-token distributions after each prefix of `tokens` (1, L), fed one token at a time."""
    dec = Decoder(model, 1, torch.tensor([1]), **decoder)
    first = dec.feed(tokens[:, :1])  # the class token and the first token: two distributions
    return torch.cat([first] + [dec.feed(tokens[:, i : i + 1]) for i in range(1, tokens.shape[1] - 1)], 1)


def test_kv_cache_and_compiled_pass_match_recompute_on_the_device():
    model = tiny_gpt(3, seq_len=8, vocab=16, n_classes=4, n_layer=2).to(TEST_DEVICE)
    tokens = torch.randint(0, 16, (1, 8), generator=torch.Generator().manual_seed(1)).to(TEST_DEVICE)
    reference = distributions(model, tokens, use_cache=False)
    assert reference.shape == (1, 8, 16) and reference.device.type == TEST_DEVICE.type
    torch.testing.assert_close(distributions(model, tokens), reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(distributions(model, tokens, compile=True), reference, atol=1e-4, rtol=1e-3)


def test_samplers_run_on_the_device_with_a_cpu_generator():
    target = tiny_gpt(4, seq_len=9, vocab=8, n_classes=3, n_layer=2).to(TEST_DEVICE)
    draft = tiny_gpt(5, seq_len=9, vocab=8, n_classes=3).to(TEST_DEVICE)
    labels = torch.tensor([0, 2])
    runs = {
        "plain": lambda g: (target.sample_tokens(2, labels, generator=g), None),
        "speculative": lambda g: minigen.speculative_sample(target, draft, 2, labels, gamma=3, generator=g),
        "jacobi": lambda g: minigen.jacobi_sample(target, 2, labels, window=4, generator=g),
        "multi-draft": lambda g: minigen.multi_draft_sample(target, draft, 2, labels, drafts=2, generator=g),
    }
    for name, run in runs.items():
        tokens = run(torch.Generator().manual_seed(0))[0]
        tokens = tokens[0] if isinstance(tokens, tuple) else tokens
        assert tokens.shape == (2, 9) and tokens.device.type == TEST_DEVICE.type, name
        assert 0 <= int(tokens.min()) and int(tokens.max()) < 8, name
        again = run(torch.Generator().manual_seed(0))[0]
        assert torch.equal(tokens, again[0] if isinstance(again, tuple) else again), f"{name}: not reproducible"


def test_a_checkpoint_saved_on_the_device_loads_on_the_cpu(tmp_path):
    model = registry.recipe("token", "smoke")["model"].to(TEST_DEVICE)
    save_checkpoint(tmp_path / "model.pt", model, step=1)
    loaded = registry.load_model(tmp_path / "model.pt", device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b.cpu())
