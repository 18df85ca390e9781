"""FlowAR and xAR (minigen/flow_ar.py): the flow-matching loss learns a known 2-d mixture, the integrator reaches a
Gaussian target's closed form, no scale sees a finer one (gradients), xAR's noisy context really is noisy, the KV
cache gives the recomputed outputs, and guidance at scale 1 is plain conditional sampling."""

import pytest
import torch
from test_mar import close_to, mixture

from minigen.flow_ar import XAR, FlowAR, FlowHead, flow_target, integrate
from minigen.tokenizers import AEConfig, ContinuousAE


def small(cls, **kw):
    torch.manual_seed(0)
    ae = ContinuousAE(AEConfig(channels=8, n_res=1, latent_dim=3))
    cfg = dict(n_layer=2, n_head=2, n_embd=32, dropout=0.0, class_drop=0.0)
    if cls is FlowAR:
        cfg.update(head_width=32, head_depth=1)
    cfg.update(kw)
    model = cls.from_tokenizer(ae, **cfg).eval()
    out = model.head.out if cls is FlowAR else model.out
    torch.nn.init.normal_(out.weight, std=0.3)  # zero-initialised outputs would predict v = 0 whatever they see
    return model


# --- flow matching alone ---


@pytest.fixture(scope="module")
def toy_flow():
    """A per-token flow head trained on the 2-d conditional mixture the diffusion head's test uses."""
    torch.manual_seed(0)
    head = FlowHead(data_dim=2, cond_dim=2, width=64, depth=2, joint=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 1500)
    for _ in range(1500):
        cond = torch.randint(0, 2, (512,))
        loss = head.loss(mixture(512, cond)[:, None], torch.eye(2)[cond][:, None])  # sets of one token
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    return head.eval()


@pytest.mark.parametrize("steps, method", [(50, "euler"), (10, "heun")])
def test_the_flow_matching_loss_learns_a_conditional_2d_mixture(toy_flow, steps, method):
    for cond in (0, 1):
        z = torch.eye(2)[cond].expand(4000, 1, 2)
        velocity = lambda x, t: toy_flow(x, torch.full((len(x),), t), z)
        samples = integrate(
            velocity, torch.randn(4000, 1, 2, generator=torch.Generator().manual_seed(0)), steps, method
        )
        assert close_to(samples[:, 0], cond), (cond, samples[:, 0].mean(0), torch.cov(samples[:, 0].T))
        assert not close_to(samples[:, 0], 1 - cond)


def gaussian_velocity(mu: float, sigma: float):
    """The exact velocity E[eps - x | x_t] of the straight path from N(mu, sigma^2) data to N(0, 1) noise."""

    def velocity(x, t):
        var = (1 - t) ** 2 * sigma**2 + t**2
        centred = x - (1 - t) * mu
        return t / var * centred - (mu + (1 - t) * sigma**2 / var * centred)

    return velocity


@pytest.mark.parametrize("method, steps", [("euler", 200), ("heun", 20)])
def test_integrating_the_exact_velocity_reaches_the_gaussian_target(method, steps):
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = integrate(gaussian_velocity(2.0, 0.5), noise, steps, method)
    assert abs(float(x.mean()) - 2.0) < 0.01 and abs(float(x.std()) - 0.5) < 0.01
    wrong = integrate(lambda x, t: -gaussian_velocity(2.0, 0.5)(x, t), noise, steps, method)  # a sign slip
    assert abs(float(wrong.mean()) - 2.0) > 1


def test_flow_target_is_the_straight_path():
    x, noise, t = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5, 1)
    x_t, v = flow_target(x, noise, t)
    torch.testing.assert_close(x_t, (1 - t) * x + t * noise)
    torch.testing.assert_close(x_t - t * v, x + 0 * t)  # following v back over time t lands on the data
    with pytest.raises(ValueError, match="method"):
        integrate(lambda x, t: x, x, 3, "rk4")


# --- causality and the KV cache ---


def test_flowar_no_scale_sees_a_finer_one():
    model = small(FlowAR)
    maps = [m.requires_grad_() for m in model.pyramid(torch.randn(2, 7, 7, 3))]
    z = model.transformer(model.inputs(maps[:-1], torch.tensor([1, 2]), 2), mask=model.mask)  # (2, 70, C)
    blocks = z.split(model.sizes, dim=1)
    for k, block in enumerate(blocks):
        grads = torch.autograd.grad(block.sum(), maps[:-1], allow_unused=True, retain_graph=True)
        for j, g in enumerate(grads):  # map j is the input of block j + 1
            seen = g is not None and bool(g.abs().sum() > 0)
            assert seen == (j + 1 <= k), (k, j)


def test_xar_a_query_sees_only_earlier_contexts_and_itself():
    model = small(XAR)
    clean, noisy = torch.randn(2, 70, 3, requires_grad=True), torch.randn(2, 70, 3, requires_grad=True)
    t = torch.rand(2, 70)
    v = model(clean, t, noisy, t, torch.tensor([0, 1]))
    starts = [0, 1, 5, 21, 70]
    for k in range(4):
        g_ctx, g_noisy = torch.autograd.grad(v[:, starts[k] : starts[k + 1]].sum(), [clean, noisy], retain_graph=True)
        for j in range(4):
            ctx_seen = bool(g_ctx[:, starts[j] : starts[j + 1]].abs().sum() > 0)
            noisy_seen = bool(g_noisy[:, starts[j] : starts[j + 1]].abs().sum() > 0)
            assert ctx_seen == (j < k) and noisy_seen == (j == k), (k, j)


def test_noisy_context_training_really_noises_the_earlier_entities(monkeypatch):
    seen = {}
    for noisy_context in (True, False):
        model = small(XAR, noisy_context=noisy_context).train()
        forward = XAR.forward
        monkeypatch.setattr(
            XAR,
            "forward",
            lambda self, c, tc, x, t, y: seen.update(c=c, tc=tc, x=x, t=t) or forward(self, c, tc, x, t, y),
        )
        images = torch.rand(4, 1, 28, 28)
        model.loss((images, torch.arange(4)))
        clean = torch.cat([m.flatten(1, 2) for m in model.pyramid(model.to_tokens(images))], 1)
        if noisy_context:
            assert torch.equal(seen["c"], seen["x"]) and torch.equal(seen["tc"], seen["t"])
            assert (seen["c"] - clean).abs().amax(-1).gt(1e-3).float().mean() > 0.9  # noised, nearly everywhere
        else:
            assert torch.equal(seen["c"], clean) and not seen["tc"].any()
        monkeypatch.undo()


def test_flowar_cached_sampling_conditions_like_the_full_pass(monkeypatch):
    model = small(FlowAR)
    zs = []
    head = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda x, t, z: zs.append(z) or head(x, t, z))
    tokens, trace = model.sample(2, torch.tensor([3, 4]), flow_steps=2, return_trace=True, return_tokens=True)
    z_full = model.transformer(model.inputs([m for m in trace["maps"][:-1]], torch.tensor([3, 4]), 2), mask=model.mask)
    last = z_full.split(model.sizes, dim=1)[-1]
    torch.testing.assert_close(zs[-1], last, atol=1e-5, rtol=1e-4)


def test_xar_cached_sampling_equals_the_training_layout_with_clean_context(monkeypatch):
    """One flow step per entity: the last entity's velocity, computed in the KV-cached generation layout, equals
    the training layout's for the same clean context (level 0) and the same noise at level 1."""
    model = small(XAR)
    outputs = []
    out = model.out.forward
    monkeypatch.setattr(model.out, "forward", lambda h: outputs.append(out(h)) or outputs[-1])
    labels = torch.tensor([3, 4])
    _, trace = model.sample(2, labels, flow_steps=1, return_trace=True, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    noise = [torch.randn(2, size, 3, generator=g) for size in model.sizes][-1]  # the draws sample made, in order
    clean = torch.cat([m.flatten(1, 2) for m in trace["maps"]], 1)  # (2, 70, 3): the finished entities
    noisy, t = clean.clone(), torch.zeros(2, 70)
    noisy[:, 21:], t[:, 21:] = noise, 1.0
    monkeypatch.undo()
    v = model(clean, torch.zeros(2, 70), noisy, t, labels)  # (2, 70, 3)
    torch.testing.assert_close(outputs[-1], v[:, 21:], atol=1e-5, rtol=1e-4)


# --- guidance ---


@pytest.mark.parametrize("cls", [FlowAR, XAR])
def test_guidance_at_scale_one_is_plain_conditional_sampling(cls, force_guidance):
    model = small(cls)
    labels = torch.tensor([1, 5, 7])
    plain = model.sample(3, labels, flow_steps=3, generator=torch.Generator().manual_seed(0), return_tokens=True)
    rows = force_guidance()
    guided = model.sample(3, labels, flow_steps=3, generator=torch.Generator().manual_seed(0), return_tokens=True)
    assert rows and all(r == 6 for r in rows)  # the guided path really ran: conditional and unconditional rows
    torch.testing.assert_close(guided, plain, atol=1e-5, rtol=1e-4)
    other = model.sample(
        3, labels, flow_steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(0), return_tokens=True
    )
    assert not torch.allclose(other, plain, atol=1e-3)  # and guidance above 1 changes the samples


# --- step counts and the recorded flow ---


@pytest.mark.parametrize("cls", [FlowAR, XAR])
def test_step_counts_per_scale_and_the_recorded_paths(cls):
    """One step count per scale changes exactly the calls it should, and the trace's paths run from the noise
    drawn to the tokens returned, one state per time visited."""
    model = small(cls)
    labels = torch.tensor([2, 8])
    tokens, trace = model.sample(
        2,
        labels,
        flow_steps=(4, 3, 2, 1),
        return_trace=True,
        return_tokens=True,
        generator=torch.Generator().manual_seed(3),
    )
    assert [len(p) for p in trace["paths"]] == [5, 4, 3, 2]
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(2, size, 3, generator=g) for size in model.sizes]  # the draws sample made, in order
    for path, first, last in zip(trace["paths"], noise, trace["maps"]):
        torch.testing.assert_close(path[0], first)
        torch.testing.assert_close(path[-1], last.flatten(1, 2))
    torch.testing.assert_close(trace["maps"][-1], tokens)
    if cls is FlowAR:  # head calls: one per Euler step, 2 s - 1 per Heun run of s steps
        assert trace["head_passes"] == 10
        assert (
            model.sample(1, labels[:1], flow_steps=(4, 3, 2, 1), method="heun", return_trace=True)[1]["head_passes"]
            == 7 + 5 + 3 + 1
        )
    else:  # one pass for the class, one per flow step, one per finished entity written into the cache
        assert trace["passes"] == 1 + 10 + 3
    for bad in ((4, 3, 2), (4, 3, 2, 0), 0, (1.5, 1, 1, 1)):
        with pytest.raises(ValueError, match="flow_steps"):
            model.sample(1, labels[:1], flow_steps=bad)
