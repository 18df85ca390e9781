"""Continuous speculative decoding: the path density, the causal model, and exactness by a two-sample test that
each planted bug fails."""

import dataclasses

import pytest
import torch

import minigen.continuous_speculative as CS
from minigen.continuous_speculative import (
    CausalMAR,
    CausalMARConfig,
    continuous_speculative_sample,
    draw_path,
    last_step_mean,
    path_log_density,
    path_schedule,
)
from minigen.metrics import energy_test
from minigen.tokenizers import AEConfig

STEPS, N = 8, 3000


def toy(seed: int, scale: float, base=None, n_classes: int = 0) -> CausalMAR:
    """A 2x2 grid of 2-d tokens under a random one-block model (random head too: a trained-looking
    zero-initialised head would predict eps = 0); with `base`, that model's weights plus noise of `scale`."""
    torch.manual_seed(seed)
    tokenizer = dataclasses.asdict(AEConfig(image_size=8, channels=8, n_res=1, latent_dim=2))
    cfg = CausalMARConfig(
        tokenizer=tokenizer,
        n_classes=n_classes,
        n_layer=1,
        n_head=2,
        n_embd=16,
        head_width=16,
        head_depth=1,
        train_diffusion_steps=20,
        dropout=0.0,
    )
    model = CausalMAR(cfg)
    if base is not None:
        model.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("tokenizer"):
                p.add_(scale * torch.randn_like(p))
        model.head.x0_bound.fill_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    target = toy(0, 0.3)
    return target, toy(1, 0.05, base=target)  # a draft that keeps about 40% of its paths


@pytest.fixture(scope="module")
def plain(pair):
    return pair[0].sample(N, diffusion_steps=STEPS, generator=torch.Generator().manual_seed(0), return_tokens=True)


def spec_samples(pair, rule, **kw):
    out, trace = continuous_speculative_sample(
        *pair,
        N,
        gamma=3,
        rule=rule,
        diffusion_steps=STEPS,
        generator=torch.Generator().manual_seed(5),
        return_tokens=True,
        **kw,
    )
    return out.flatten(1), trace


def p_value(a, b) -> float:
    return energy_test(a.flatten(1), b.flatten(1), 500, torch.Generator().manual_seed(1))[1]


# --- one path and its density ---


def test_path_density_scored_at_once_equals_the_steps_that_drew_it(pair):
    head = pair[0].head
    z = torch.randn(5, 16)
    noise = torch.randn(STEPS + 1, 5, 2, generator=torch.Generator().manual_seed(0))
    path, log_q = draw_path(head, z, None, 1.0, STEPS, noise)
    assert torch.allclose(path_log_density(head, path, z), log_q, atol=1e-4)
    other = path_log_density(pair[1].head, path, z)  # another head rates the same path lower on average here
    assert not torch.allclose(other, log_q, atol=1e-2)


def test_every_step_adds_noise_and_the_last_step_mean_is_the_token_minus_its_noise(pair):
    head = pair[0].head
    std = path_schedule(head, STEPS)[3]
    assert (std > 0).all() and std.shape == (STEPS,)
    z, noise = torch.randn(4, 16), torch.randn(STEPS + 1, 4, 2)
    path, _ = draw_path(head, z, None, 1.0, STEPS, noise)
    assert torch.allclose(last_step_mean(head, z, None, 1.0, STEPS, noise), path[-1] - std[-1] * noise[-1], atol=1e-5)


def test_keep_probabilities():
    lp, lq = torch.tensor([0.0, -1.0, -3.0]), torch.tensor([-1.0, -1.0, -1.0])
    assert torch.allclose(CS.keep_prob(lp, lq), torch.tensor([1.0, 1.0, torch.e**-2]))
    assert torch.allclose(CS.residual_keep_prob(lp, lq), torch.tensor([1 - torch.e**-1, 0.0, 0.0]))


# --- the causal model ---


def test_conditions_are_causal_by_gradients(pair):
    model = pair[0]
    tokens = torch.randn(1, 4, 2, requires_grad=True)
    z = model(tokens)  # (1, 4, C)
    w = torch.randn(z.shape[-1])  # a random read-out: the plain sum of a LayerNorm's output is constant
    for i in range(4):
        (grad,) = torch.autograd.grad(z[0, i] @ w, tokens, retain_graph=True)
        assert (grad[0, i:] == 0).all() and (i == 0 or grad[0, :i].abs().sum() > 0)


def test_the_cached_stream_gives_the_conditions_of_a_full_pass(pair):
    model = pair[0]
    tokens = torch.randn(3, 4, 2)
    stream = model.stream(3)
    z0, _ = stream.feed(tokens[:, :2])  # class token and two tokens: conditions of positions 0-2
    z1, _ = stream.feed(tokens[:, 2:3])
    assert torch.allclose(torch.cat([z0, z1], 1), model(tokens), atol=1e-5)
    stream.truncate(1)  # keep one token: the next feed is token 1 again
    z2, _ = stream.feed(tokens[:, 1:2])
    assert torch.allclose(z2[:, 0], model(tokens)[:, 2], atol=1e-5)


def test_the_model_learns_a_loss_and_checks_its_inputs(pair):
    model = pair[0]
    assert model.loss(torch.randn(4, 2, 2, 2)).item() > 0
    with pytest.raises(ValueError, match="rule"):
        continuous_speculative_sample(*pair, 2, rule="token")
    with pytest.raises(ValueError, match="gamma"):
        continuous_speculative_sample(*pair, 2, gamma=0)
    with pytest.raises(ValueError, match="diffusion_steps"):
        continuous_speculative_sample(*pair, 2, diffusion_steps=0)


# --- exactness: the speculative sampler draws what the target draws ---


@pytest.mark.parametrize("rule", CS.RULES)
def test_speculative_samples_are_the_targets(pair, plain, rule):
    spec, trace = spec_samples(pair, rule)
    assert p_value(spec, plain) > 0.01
    assert trace["target_passes"] == trace["rounds"] < 4 * N  # fewer target passes than tokens
    assert 0.0 < trace["acceptance"] < 1.0


def test_guided_speculative_samples_are_the_guided_targets():
    target = toy(0, 0.3, n_classes=2)
    pair = (target, toy(1, 0.05, base=target, n_classes=2))
    labels = torch.arange(N) % 2
    kw = dict(diffusion_steps=STEPS, cfg_scale=2.0, return_tokens=True)
    plain = target.sample(N, labels, generator=torch.Generator().manual_seed(0), **kw)
    spec, _ = continuous_speculative_sample(*pair, N, labels, gamma=3, generator=torch.Generator().manual_seed(5), **kw)
    assert p_value(spec, plain) > 0.01
    unguided = target.sample(N, labels, diffusion_steps=STEPS, return_tokens=True)
    assert p_value(unguided, plain) <= 0.002  # guidance changes what is drawn: the test could tell


def test_the_path_rule_keeps_more_than_the_aligned_rule(pair):
    assert spec_samples(pair, "path")[1]["acceptance"] > spec_samples(pair, "aligned")[1]["acceptance"] + 0.2


PLANTED = {
    # accept with min(1, q/p): the ratio upside down
    "q_over_p": ("keep_prob", lambda orig: lambda lp, lq: orig(lq, lp)),
    # on rejection draw from p itself: the residual dropped
    "no_residual": ("residual_keep_prob", lambda orig: lambda lp, lq: torch.ones_like(lp)),
    # an "inner temperature" that widens the Gaussians in the test (CSpD's runner does this): more is accepted
    "temperature": ("_gauss", lambda orig: lambda x, mean, std: orig(x, mean, 10 * std)),
}


@pytest.mark.parametrize(
    "rule,bug", [("path", "q_over_p"), ("aligned", "q_over_p"), ("path", "no_residual"), ("aligned", "temperature")]
)
def test_each_planted_bug_is_caught(pair, plain, monkeypatch, rule, bug):
    name, make = PLANTED[bug]
    monkeypatch.setattr(CS, name, make(getattr(CS, name)))
    spec, _ = spec_samples(pair, rule)
    assert p_value(spec, plain) <= 0.002  # the smallest p-value 500 permutations can give
