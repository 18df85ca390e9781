import pytest
import torch

from minigen.data import ImageDataset, make_loader
from minigen.scale_ar import VAR
from minigen.tokenizers import MultiScaleVQ, MultiScaleVQConfig
from minigen.train import fit


def tiny_vq(**kw):
    torch.manual_seed(0)
    cfg = dict(channels=8, n_res=1, latent_dim=4, n_codes=16)
    cfg.update(kw)
    return MultiScaleVQ(MultiScaleVQConfig(**cfg))


def small(**kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(kw)
    model = VAR.from_tokenizer(tiny_vq(), **cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero-initialised head would hide every gradient
    return model


def test_block_causal_attention_leaks_nothing_across_scales():
    model = small()
    block_of = torch.repeat_interleave(torch.arange(6), torch.tensor(model.block_sizes))  # (104,)
    x = torch.randn(1, model.seq_len, 32, requires_grad=True)
    out = model.head(model.transformer(x, mask=model.mask))  # (1, 104, V)
    for i in range(model.seq_len):
        (grad,) = torch.autograd.grad(out[0, i].square().sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(-1) > 0
        assert torch.equal(seen, block_of <= block_of[i]), f"position {i} (scale {int(block_of[i])})"


def test_teacher_forced_logits_agree_with_and_without_cache():
    model = small()
    tokens = model.to_tokens(torch.rand(3, 1, 28, 28))  # (3, 104)
    labels = torch.tensor([1, 5, 9])
    full = model(tokens, labels)  # (3, 104, V)
    inputs = model.teacher_inputs(model.split(tokens), labels).split(model.block_sizes, dim=1)
    cache = model.transformer.new_cache(3)
    stepwise = torch.cat([model.head(model.transformer(x, mask=model.mask, cache=cache)) for x in inputs], 1)
    torch.testing.assert_close(stepwise, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_sampling_runs_one_pass_per_scale_and_cache_changes_nothing(cfg_scale):
    model = small()
    calls = []
    hook = model.transformer.register_forward_hook(lambda mod, args, out: calls.append(out.shape))
    fast = model.sample(
        4, torch.arange(4), cfg_scale=cfg_scale, return_tokens=True, generator=torch.Generator().manual_seed(3)
    )
    assert [c[1] for c in calls] == model.block_sizes  # one pass per scale, each returning that scale's tokens
    hook.remove()
    slow = model.sample(
        4,
        torch.arange(4),
        cfg_scale=cfg_scale,
        return_tokens=True,
        use_cache=False,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(fast, slow) and fast.shape == (4, 104)


def test_cfg_one_is_plain_sampling_and_the_trace_goes_coarse_to_fine():
    model = small()
    a = model.sample(3, torch.arange(3), return_tokens=True, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, torch.arange(3), cfg_scale=1.0, return_tokens=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    images, trace = model.sample(2, torch.arange(2), return_trace=True, generator=torch.Generator().manual_seed(1))
    assert trace["passes"] == 6 and trace["frames"].shape == (6, 2, 1, 28, 28)
    assert [tuple(c.shape[1:]) for c in trace["codes"]] == [(s, s) for s in (1, 2, 3, 4, 5, 7)]
    torch.testing.assert_close(trace["frames"][-1], images)


def test_multiscale_reconstruction_error_falls_as_scales_are_added():
    torch.manual_seed(0)
    images = torch.zeros(256, 1, 28, 28)
    for i in range(256):  # a block and a bar: coarse and fine structure
        images[i, 0, 4 + (i % 4) * 3 : 14 + (i % 4) * 3, 4:18] = 0.5
        images[i, 0, :, 3 * (i % 8) + 2 : 3 * (i % 8) + 4] = 1.0
    vq = tiny_vq(channels=16, restart_every=10)
    fit(
        vq,
        make_loader(ImageDataset(images, torch.zeros(256, dtype=torch.long)), 32),
        steps=300,
        lr=3e-3,
        progress=False,
    )
    mse = vq.evaluate(images)["mse_per_scale"]
    assert all(b < a for a, b in zip(mse, mse[1:])), mse
    assert mse[-1] < 0.25 * mse[0]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="scales"):
        MultiScaleVQConfig(scales=(1, 2, 4))
    with pytest.raises(ValueError, match="scales"):
        MultiScaleVQConfig(scales=(2, 1, 7))
    model = small()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 16\)"):
        model.loss((torch.full((2, 104), 16), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="104"):
        model.loss((torch.zeros(2, 49, dtype=torch.long), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="scale 1"):
        model.tokenizer.decode([torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, torch.tensor([0, 10]))
