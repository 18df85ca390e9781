import math

import pytest
import torch

from minigen.diffusion_ar import MAR, DiffusionHead, cosine_alpha_bar
from minigen.masked_ar import masked_count
from minigen.tokenizers import AEConfig, ContinuousAE


def small(**kw):
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(channels=8, n_res=1, latent_dim=3))
    cfg = dict(n_layer=2, n_head=2, n_embd=32, head_width=32, head_depth=1, dropout=0.0, train_diffusion_steps=100)
    cfg.update(kw)
    model = MAR.from_tokenizer(ae, **cfg).eval()
    for p in model.head.parameters():  # a zero-initialised head would predict eps = 0 whatever it is given
        torch.nn.init.normal_(p, std=0.3)
    return model


# --- the diffusion head alone ---


def mixture(n: int, cond: torch.Tensor) -> torch.Tensor:
    """Condition 0: two blobs at (+-2, 0), std 0.3. Condition 1: a correlated Gaussian at (1, -1)."""
    x = torch.empty(n, 2)
    first = cond == 0
    k = int(first.sum())
    side = torch.randint(0, 2, (k,)) * 4.0 - 2.0
    x[first] = torch.stack([side, torch.zeros(k)], 1) + 0.3 * torch.randn(k, 2)
    chol = torch.tensor([[0.6, 0.0], [0.4, 0.5]])
    x[~first] = torch.tensor([1.0, -1.0]) + torch.randn(n - k, 2) @ chol.T
    return x


TRUE = {
    0: (torch.tensor([0.0, 0.0]), torch.tensor([[4.09, 0.0], [0.0, 0.09]])),  # 2^2 + 0.3^2 along x
    1: (torch.tensor([1.0, -1.0]), torch.tensor([[0.36, 0.24], [0.24, 0.41]])),
}  # chol @ chol.T


def close_to(samples, cond) -> bool:
    mean, cov = TRUE[cond]
    ok = (samples.mean(0) - mean).abs().max() < 0.2
    ok &= ((torch.cov(samples.T) - cov).abs() <= 0.1 + 0.1 * cov.abs()).all()
    if cond == 0:  # both modes, in equal shares
        ok &= abs(float((samples[:, 0] < 0).float().mean()) - 0.5) < 0.1
    return bool(ok)


@pytest.fixture(scope="module")
def toy_head():
    torch.manual_seed(0)
    head = DiffusionHead(data_dim=2, cond_dim=2, width=64, depth=2, n_steps=1000)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1500)  # without it the mode shares stay ~5% off
    for _ in range(1500):
        cond = torch.randint(0, 2, (512,))
        loss = head.loss(mixture(512, cond), torch.eye(2)[cond])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    return head.eval()


@pytest.mark.parametrize("steps", [50, 100])
def test_diffusion_head_learns_a_conditional_2d_mixture(toy_head, steps):
    g = torch.Generator().manual_seed(0)
    for cond in (0, 1):
        samples = toy_head.sample(torch.eye(2)[cond].expand(4000, 2), diffusion_steps=steps, generator=g)
        assert close_to(samples, cond), (cond, samples.mean(0), torch.cov(samples.T))
        assert not close_to(samples, 1 - cond)  # the check tells the two conditions apart


def test_untrained_head_fails_the_mixture_check():
    torch.manual_seed(0)
    head = DiffusionHead(data_dim=2, cond_dim=2, width=64, depth=2)
    samples = head.sample(
        torch.eye(2)[0].expand(4000, 2), diffusion_steps=50, generator=torch.Generator().manual_seed(0)
    )
    assert not close_to(samples, 0)


def test_guidance_mixes_the_noise_predictions(toy_head):
    """cfg_scale 1 ignores the unconditional input; scale 0 samples from it; scale w > 1 equals sampling
    with a head whose prediction is eps_u + w (eps_c - eps_u) (checked against a hand-made wrapper)."""
    z_c, z_u = torch.eye(2)[0].expand(300, 2), torch.eye(2)[1].expand(300, 2)

    def draw(**kw):
        return toy_head.sample(z_c, diffusion_steps=20, generator=torch.Generator().manual_seed(3), **kw)

    assert torch.equal(draw(z_uncond=z_u, cfg_scale=1.0), draw())
    torch.testing.assert_close(
        draw(z_uncond=z_u, cfg_scale=0.0),
        toy_head.sample(z_u, diffusion_steps=20, generator=torch.Generator().manual_seed(3)),
    )
    guided = draw(z_uncond=z_u, cfg_scale=2.5)
    original = toy_head.forward
    toy_head.forward = lambda x, t, z: original(x, t, z_u) + 2.5 * (original(x, t, z) - original(x, t, z_u))
    try:
        by_hand = draw()
    finally:
        del toy_head.forward
    torch.testing.assert_close(guided, by_hand, atol=1e-5, rtol=1e-5)


def test_schedule_and_temperature_zero():
    a = cosine_alpha_bar(1000)
    assert a.shape == (1000,) and (a[1:] < a[:-1]).all() and 0.999 < a[0] < 1 and a[-1] < 1e-6
    head = DiffusionHead(2, 2, width=16, depth=1, n_steps=1000)
    t, a_t, a_next = head.respaced(10)
    assert t.tolist()[0] == 999 and t.tolist()[-1] == 0 and float(a_next[-1]) == 1.0
    torch.nn.init.normal_(head.out.weight)
    z = torch.randn(5, 2)
    x1, path = head.sample(
        z, diffusion_steps=10, temperature=0.0, generator=torch.Generator().manual_seed(1), return_trajectory=True
    )
    x2 = head.sample(z, diffusion_steps=10, temperature=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and path.shape == (11, 5, 2) and torch.equal(path[-1], x1)


# --- MAR: what is generated where and when ---


@pytest.mark.parametrize("num_iter", [1, 4, 16, 49])
def test_schedule_generates_every_token_exactly_once(num_iter):
    model = small()
    _, trace = model.sample(
        3,
        torch.tensor([0, 1, 2]),
        num_iter=num_iter,
        diffusion_steps=3,
        return_trace=True,
        generator=torch.Generator().manual_seed(0),
    )
    at = trace["generated_at"].flatten(1)  # (n, L)
    assert (at >= 0).all() and int(at.max()) == num_iter - 1
    expected, done = [], 0  # new tokens per pass: the cosine schedule, at least one, all by the end
    for k in range(num_iter):
        left = 0 if k == num_iter - 1 else max(1, min(masked_count(49, k, num_iter), 49 - done - 1))
        expected.append(49 - left - done)
        done = 49 - left
    assert trace["counts"] == expected and sum(expected) == 49 and min(expected) >= 1
    for row in at:
        assert torch.bincount(row, minlength=num_iter).tolist() == expected
    if num_iter == 49:
        assert expected == [1] * 49
    if num_iter == 16:  # MAR's schedule starts slowly: floor(49 cos(pi/32)) = 48 left after the first pass
        assert expected[0] == 49 - math.floor(49 * math.cos(math.pi / 32))
    assert trace["passes"] == num_iter and trace["head_passes"] == 3 * num_iter


def test_each_pass_generates_exactly_the_masked_positions_it_picked():
    model = small()
    seen_masks, head_rows = [], []
    hook = model.register_forward_pre_hook(lambda mod, args: seen_masks.append(args[1].clone()))
    original = model.head.sample

    def counting(z, **kw):
        head_rows.append(z.shape[0])
        return original(z, **kw)

    model.head.sample = counting
    try:
        final, trace = model.sample(
            4,
            torch.arange(4),
            num_iter=6,
            diffusion_steps=4,
            cfg_scale=2.0,
            return_trace=True,
            return_tokens=True,
            generator=torch.Generator().manual_seed(1),
        )
    finally:
        hook.remove()
        del model.head.sample
    at = trace["generated_at"].flatten(1)  # (n, L)
    snaps = trace["tokens"].flatten(2, 3)  # (T, n, L, D)
    for k in range(6):
        # the transformer saw as unknown exactly the tokens not generated before pass k (twice: CFG rows)
        assert torch.equal(seen_masks[k], torch.cat([at >= k, at >= k]))
        assert head_rows[k] == 4 * trace["counts"][k]  # the head ran once per new token, no more
        assert (snaps[k][at > k] == 0).all()  # later tokens are untouched
        assert (snaps[k][at <= k] != 0).all()
        if k:  # and earlier ones never change
            assert torch.equal(snaps[k][at < k], snaps[k - 1][at < k])
    assert torch.equal(snaps[-1], final.flatten(1, 2))


def test_masked_values_never_reach_the_transformer_and_the_loss_uses_only_masked_tokens():
    model = small()
    tokens = torch.randn(3, 49, 3)
    mask = torch.rand(3, 49) < 0.6
    z = model(tokens, mask, torch.tensor([1, 2, 3]))
    changed = torch.where(mask[..., None], torch.randn_like(tokens), tokens)
    assert torch.equal(model(changed, mask, torch.tensor([1, 2, 3])), z)
    unmasked_changed = torch.where(mask[..., None], tokens, torch.randn_like(tokens))
    assert not torch.allclose(model(unmasked_changed, mask, torch.tensor([1, 2, 3])), z)  # the test has power
    rows = []
    original = model.head.loss
    model.head.loss = lambda x0, zz, repeats: (
        rows.append((x0.clone(), zz.shape[0], repeats)) or original(x0, zz, repeats)
    )
    try:
        model.masked_loss(tokens, mask, torch.tensor([1, 2, 3]))
    finally:
        del model.head.loss
    x0, n_rows, repeats = rows[0]
    assert n_rows == int(mask.sum()) and repeats == model.config.head_repeats
    assert torch.equal(x0, tokens[mask])


def test_training_mask_ratio_is_a_truncated_normal_on_07_1():
    model = small()
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([model.mask_ratio(g) for _ in range(20_000)])
    assert float(ratios.min()) >= 0.7 and float(ratios.max()) <= 1.0
    # mean of N(1, 0.25) truncated to [0.7, 1]: 1 - 0.25 (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2))
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    mean = 1 - 0.25 * (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2))
    assert abs(float(ratios.mean()) - mean) < 4 * float(ratios.std()) / math.sqrt(20_000)
    masks = model.random_mask(6, "cpu")
    assert (masks.sum(1) == masks.sum(1)[0]).all() and int(masks.sum(1)[0]) >= math.ceil(0.7 * 49)


def test_sampling_is_deterministic_for_a_fixed_generator():
    model = small()
    a = model.sample(
        3,
        torch.tensor([4, 5, 6]),
        num_iter=4,
        diffusion_steps=5,
        cfg_scale=1.5,
        generator=torch.Generator().manual_seed(7),
    )
    b = model.sample(
        3,
        torch.tensor([4, 5, 6]),
        num_iter=4,
        diffusion_steps=5,
        cfg_scale=1.5,
        generator=torch.Generator().manual_seed(7),
    )
    c = model.sample(
        3,
        torch.tensor([4, 5, 6]),
        num_iter=4,
        diffusion_steps=5,
        cfg_scale=1.5,
        generator=torch.Generator().manual_seed(8),
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 28, 28) and 0 <= float(a.min()) and float(a.max()) <= 1


def test_loss_accepts_images_or_ready_tokens_and_trains():
    model = small().train()
    images, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    tokens = model.tokenizer.encode(images)  # (4, 7, 7, 3)
    torch.manual_seed(1)
    from_images = model.loss((images, labels))
    torch.manual_seed(1)
    from_tokens = model.loss((tokens, labels))
    assert torch.equal(from_images, from_tokens) and from_images.requires_grad
    from_images.backward()
    assert all(p.grad is None for p in model.tokenizer.parameters())  # the tokenizer stays frozen
    assert model.transformer.blocks[0].attn.qkv.weight.grad is not None


def test_bad_inputs_raise_clear_errors():
    model = small()
    with pytest.raises(ValueError, match=r"num_iter must be an integer in \[1, 49\]"):
        model.sample(2, num_iter=50)
    with pytest.raises(ValueError, match=r"diffusion_steps must be an integer in \[1, 100\]"):
        model.sample(2, diffusion_steps=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.sample(2, torch.tensor([0, 1]), cfg_schedule="cubic")
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"expected continuous tokens \(B, 7, 7, 3\)"):
        model.loss(torch.randn(2, 7, 7, 5))
    with pytest.raises(ValueError, match="expected tokens"):
        model.head.loss(torch.randn(4, 5), torch.randn(4, 32))
