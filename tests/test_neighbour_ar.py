"""Next-neighbour AR (minigen/neighbour_ar.py): the diagonal order, causality across diagonals by gradients, an
exact likelihood (it sums to 1 over every token grid of a tiny model), a KV-cached sampler that draws from that
likelihood (chi-square over all grids) and agrees with the full pass, 2 * grid - 1 passes, and guidance at scale 1
equal to plain sampling."""

import itertools

import pytest
import torch
from test_speculative import chi_square_pvalue

from minigen.neighbour_ar import NAR, diagonal_order
from minigen.tokenizers import VQVAE, VQConfig


def tiny(image_size=8, n_codes=3, n_classes=2, seed=0):
    """A NAR over a (image_size / 4)^2 grid of n_codes codes, random weights everywhere (the heads are
    zero-initialised, which would make every conditional uniform)."""
    torch.manual_seed(seed)
    vq = VQVAE(VQConfig(image_size=image_size, channels=8, n_res=1, latent_dim=4, n_codes=n_codes))
    model = NAR.from_tokenizer(vq, n_layer=2, n_head=2, n_embd=16, dropout=0.0, class_drop=0.0, n_classes=n_classes)
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight, std=1.0)
    return model.eval()


def test_the_diagonal_order_of_a_3x3_grid():
    assert diagonal_order(3).tolist() == [0, 1, 3, 2, 4, 6, 5, 7, 8]
    model = tiny(image_size=28, n_codes=16)
    assert model.sizes == [1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1] and model.n_diagonals == 13


def test_no_token_sees_its_own_diagonal_or_a_later_one():
    model = tiny(image_size=20, n_codes=8)  # a 5x5 grid
    g, L = model.grid, model.seq_len
    tokens = torch.randint(0, 8, (2, L))
    emb = model.token_emb(tokens[:, model.order]).detach().requires_grad_(True)  # (2, L, C), diagonal order
    x = torch.cat([model.class_emb(torch.tensor([0, 1]), batch=2)[:, None], emb], 1)
    logits = model.logits_from(model.transformer(x, mask=model.mask), torch.arange(L))  # (2, L, V), raster order
    diagonal_of_place = model.order // g + model.order % g  # (L,): the diagonal at each sequence place
    for k in range(L):
        (grad,) = torch.autograd.grad((logits[:, k] * torch.randn_like(logits[:, k])).sum(), emb, retain_graph=True)
        seen = grad.abs().sum((0, 2)) > 0  # (L,) places this token's logits depend on
        d = k // g + k % g
        assert not seen[diagonal_of_place >= d].any(), f"token {divmod(k, g)} sees diagonal {d} or later"
        if d > 0:
            assert seen[diagonal_of_place == d - 1].any(), f"token {divmod(k, g)} ignores the diagonal before it"


def all_grids(model):
    return torch.tensor(list(itertools.product(range(model.vocab_size), repeat=model.seq_len)))


def test_the_likelihood_is_exact_it_sums_to_one_over_all_grids():
    model = tiny()  # a 2x2 grid of 3 codes: 81 grids
    grids = all_grids(model)
    for label in (0, 1):
        with torch.no_grad():
            nll = model.nll((grids, torch.full((len(grids),), label)))  # (81,)
        assert float(torch.exp(-nll.double()).sum()) == pytest.approx(1.0, abs=1e-5)


def test_the_cached_sampler_draws_from_the_likelihood():
    model = tiny()
    grids = all_grids(model)
    with torch.no_grad():
        probs = torch.exp(-model.nll((grids, torch.ones(len(grids), dtype=torch.long))).double())  # (81,)
        drawn = model.sample(6000, torch.ones(6000, dtype=torch.long), return_tokens=True,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert chi_square_pvalue(drawn.flatten(1), probs, model.vocab_size) > 1e-3
    wrong = torch.roll(probs, 1)  # and the same test rejects a distribution it does not come from
    assert chi_square_pvalue(drawn.flatten(1), wrong, model.vocab_size) < 1e-6


def test_greedy_cached_sampling_agrees_with_the_full_pass_and_takes_2g_minus_1_passes():
    model = tiny(image_size=28, n_codes=16)  # 7x7
    labels = torch.tensor([0, 1, 1])
    tokens, trace = model.sample(3, labels, temperature=0.0, return_tokens=True, return_trace=True)
    with torch.no_grad():
        full = model(tokens.flatten(1), labels)  # (3, 49, 16): conditionals given the drawn earlier diagonals
    assert torch.equal(full.argmax(-1), tokens.flatten(1))
    assert trace["passes"] == 13 and trace["frames"].shape[0] == 13
    assert (trace["frames"][0] == 0.5).float().mean() > 0.9  # after the first pass only one token is drawn


def test_guidance_at_scale_one_is_plain_conditional_sampling(force_guidance):
    model = tiny(image_size=28, n_codes=16)
    labels = torch.tensor([0, 1, 0])
    plain = model.sample(3, labels, generator=torch.Generator().manual_seed(0), return_tokens=True)
    rows = force_guidance()
    guided = model.sample(3, labels, generator=torch.Generator().manual_seed(0), return_tokens=True)
    assert rows and all(r == 6 for r in rows)
    assert torch.equal(guided, plain)
    other = model.sample(3, labels, cfg_scale=4.0, generator=torch.Generator().manual_seed(0), return_tokens=True)
    assert not torch.equal(other, plain)
