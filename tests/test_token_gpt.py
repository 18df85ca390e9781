import pytest
import torch

from minigen.registry import load_model
from minigen.token_ar import TokenGPT
from minigen.tokenizers import VQVAE, VQConfig
from minigen.train import fit, save_checkpoint


def small(**kw):
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(channels=8, n_res=1, latent_dim=4, n_codes=16))
    cfg = dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(kw)
    model = TokenGPT.from_tokenizer(vq, **cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero-initialised head would hide every gradient
    return model


def test_token_gpt_is_causal():
    """d logits[i] / d input embedding of token j is exactly zero for every j >= i (49 tokens)."""
    model = small()
    tokens = torch.randint(0, 16, (1, 49))
    emb = model.embed(tokens[:, :-1], torch.tensor([4])).detach().requires_grad_(True)  # (1, 49, C)
    logits = model.head(model.transformer(emb, mask="causal"))  # (1, 49, V)
    for i in range(49):
        (grad,) = torch.autograd.grad(logits[0, i].square().sum(), emb, retain_graph=True)
        seen = grad[0].abs().sum(-1) > 0  # class token, then tokens 0..47
        assert seen[: i + 1].all(), f"token {i} ignores an earlier token"
        assert not seen[i + 1 :].any(), f"token {i} sees token >= {i}"


def test_cached_sampling_returns_the_same_tokens_as_recompute():
    model = small()
    labels = torch.tensor([1, 7, 7, 2])
    for cfg_scale in (1.0, 3.0):
        fast = model.sample(
            4, labels, cfg_scale=cfg_scale, return_tokens=True, generator=torch.Generator().manual_seed(5)
        )
        slow = model.sample(
            4,
            labels,
            cfg_scale=cfg_scale,
            return_tokens=True,
            use_cache=False,
            generator=torch.Generator().manual_seed(5),
        )
        assert torch.equal(fast, slow)
    unconditional = model.sample(3, None, return_tokens=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        unconditional,
        model.sample(3, None, return_tokens=True, use_cache=False, generator=torch.Generator().manual_seed(1)),
    )


def test_cfg_scale_one_is_plain_conditional_sampling_and_guidance_changes_it(force_guidance, monkeypatch):
    model = small()
    draw = lambda **kw: model.sample(
        6, torch.arange(6), return_tokens=True, generator=torch.Generator().manual_seed(0), **kw
    )
    plain = draw()  # the shortcut: conditional rows only
    rows = force_guidance()
    one = draw(cfg_scale=1.0)  # the guided path: conditional and unconditional rows, mixed with scale 1
    assert set(rows) == {12}, "the guided path did not run"
    assert torch.equal(plain, one) and not torch.equal(plain, draw(cfg_scale=3.0))
    for use_cache in (True, False):
        assert torch.equal(one, draw(cfg_scale=1.0, use_cache=use_cache))
    from conftest import swap_guidance

    import minigen.raster

    swap_guidance(monkeypatch, minigen.raster)  # a planted bug in the mixing: this test must catch it
    assert not torch.equal(plain, draw(cfg_scale=1.0))


def test_sample_returns_decoded_images_and_a_trace():
    model = small()
    images, trace = model.sample(2, torch.tensor([0, 1]), return_trace=True, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert trace["frames"].shape == (49, 2, 1, 28, 28) and trace["passes"] == 49
    torch.testing.assert_close(model.to_images(trace["tokens"].flatten(1)), images)
    torch.testing.assert_close(trace["frames"][-1], images)
    assert (trace["frames"][0][:, :, 4:, :] == 0.5).all()  # after one token, everything below row 0 is to come


def test_loss_from_images_equals_loss_from_tokens_and_tokenizer_stays_frozen():
    model = small()
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    tokens = model.tokenizer.encode(images)
    torch.testing.assert_close(model.loss((images, labels)), model.loss((tokens, labels)))
    frozen = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    data = [(tokens, labels)] * 4
    fit(model, data, steps=4, lr=1e-2, progress=False)
    assert not model.tokenizer.training
    for k, v in model.tokenizer.state_dict().items():
        assert torch.equal(v, frozen[k]), f"tokenizer weight {k} changed while training the GPT"


def test_checkpoint_roundtrip_keeps_tokenizer_and_samples(tmp_path):
    model = small()
    save_checkpoint(tmp_path / "token.pt", model, step=1)
    loaded = load_model(tmp_path / "token.pt", device="cpu")
    a = model.sample(3, torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(2))
    b = loaded.sample(3, torch.tensor([1, 2, 3]), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_bad_inputs_raise_clear_errors():
    model = small()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 16\)"):
        model.loss((torch.full((2, 7, 7), 16), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="expected token grids"):
        model.loss((torch.zeros(2, 6, 6, dtype=torch.long), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="expected images"):
        model.loss((torch.rand(2, 1, 14, 14), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="cfg_scale"):
        model.sample(2, torch.tensor([0, 1]), cfg_scale=-1.0)
    with pytest.raises(ValueError, match="differs"):
        model.set_tokenizer(VQVAE(VQConfig(channels=8, n_res=1, latent_dim=4, n_codes=32)))
