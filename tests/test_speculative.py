"""Speculative decoding: exact by enumeration, by chi-square on real GPTs, and tests that catch known bugs."""

import itertools
import math
from collections import defaultdict

import pytest
import torch
from conftest import tiny_gpt

from minigen import speculative as S
from minigen import speculative_variants as SV
from minigen.sampling import sample_from_probs, warp_logits

# --- probability-table models and a dice that walks every outcome -----------------------


class TableLM:
    """A next-token model given by explicit float64 logits for every prefix shorter than seq_len."""

    def __init__(self, seq_len=3, vocab=3, seed=0, scale=1.5):
        g = torch.Generator().manual_seed(seed)
        self.seq_len, self.vocab_size = seq_len, vocab
        self.logits = {
            prefix: scale * torch.randn(vocab, generator=g, dtype=torch.float64)
            for t in range(seq_len)
            for prefix in itertools.product(range(vocab), repeat=t)
        }

    def eval(self):
        return self

    def probs(self, prefix, **warp):
        return warp_logits(self.logits[tuple(prefix)], **warp)

    def decoder(self, rows, labels, temperature=1.0, top_k=None, top_p=None, cfg_scale=1.0):
        return TableDecoder(self, rows, dict(temperature=temperature, top_k=top_k, top_p=top_p))

    def chain_rule(self, **warp) -> dict:
        dist = {}
        for seq in itertools.product(range(self.vocab_size), repeat=self.seq_len):
            dist[seq] = math.prod(float(self.probs(seq[:t], **warp)[seq[t]]) for t in range(self.seq_len))
        return dist


class TableDecoder:
    """The interface of minigen.speculative.Decoder over a TableLM."""

    dtype, device = torch.float64, torch.device("cpu")

    def __init__(self, model, rows, warp):
        self.model, self.warp, self.seq_len, self.vocab_size = model, warp, model.seq_len, model.vocab_size
        self.seqs, self.started, self.passes = [[] for _ in range(rows)], False, 0

    @property
    def length(self):
        return len(self.seqs[0])

    def feed(self, tokens):
        out = []
        for seq, new in zip(self.seqs, tokens.tolist()):
            row = [] if self.started else [self.model.probs(seq, **self.warp)]
            for t in new:
                seq.append(t)
                row.append(self.model.probs(seq, **self.warp))
            out.append(torch.stack(row))
        self.started, self.passes = True, self.passes + 1
        return torch.stack(out)  # (rows, k, V)

    def truncate(self, length):
        self.seqs = [s[:length] for s in self.seqs]

    def reorder(self, index):
        self.seqs = [list(self.seqs[i]) for i in index.tolist()]


class EnumeratingDice:
    """Makes every random choice from a script (option indices) and multiplies up its probability;
    choices past the script take option 0 and are recorded, so the caller can enumerate all paths."""

    def __init__(self, script):
        self.script, self.choices, self.prob = script, [], 1.0

    def _pick(self, weights):
        options = [i for i, w in enumerate(weights) if w > 0]
        k = len(self.choices)
        c = self.script[k] if k < len(self.script) else 0
        self.choices.append((c, len(options)))
        self.prob *= weights[options[c]]
        return options[c]

    def coin(self, prob):
        picks = [bool(self._pick([1.0 - p, p])) for p in prob.reshape(-1).tolist()]
        return torch.tensor(picks, dtype=torch.bool).reshape(prob.shape)

    def categorical(self, probs):
        picks = [self._pick(row) for row in probs.reshape(-1, probs.shape[-1]).tolist()]
        return torch.tensor(picks, dtype=torch.long).reshape(probs.shape[:-1])


def output_distribution(run) -> dict:
    """The exact distribution of run(dice)'s first row of tokens, over every path of random choices."""
    dist, script = defaultdict(float), []
    while True:
        dice = EnumeratingDice(script)
        tokens = run(dice)
        dist[tuple(tokens[0].tolist())] += dice.prob
        i = len(dice.choices) - 1
        while i >= 0 and dice.choices[i][0] + 1 >= dice.choices[i][1]:
            i -= 1
        if i < 0:
            return dict(dist)
        script = [c for c, _ in dice.choices[:i]] + [dice.choices[i][0] + 1]


def max_gap(dist, reference):
    return max(abs(dist.get(k, 0.0) - reference[k]) for k in reference)


TARGET, DRAFT = TableLM(seed=0), TableLM(seed=1)
EXACT_VARIANTS = {
    "speculative gamma=1": lambda dice, w: S.speculative_sample(TARGET, DRAFT, gamma=1, dice=dice, **w),
    "speculative gamma=2": lambda dice, w: S.speculative_sample(TARGET, DRAFT, gamma=2, dice=dice, **w),
    "jacobi random": lambda dice, w: SV.jacobi_sample(TARGET, window=2, init="random", dice=dice, **w),
    "jacobi left": lambda dice, w: SV.jacobi_sample(TARGET, window=3, init="left", dice=dice, **w),
    "jacobi above": lambda dice, w: SV.jacobi_sample(TARGET, window=2, init="above", dice=dice, **w),
    "lantern delta=0": lambda dice, w: SV.lantern_sample(
        TARGET, DRAFT, gamma=2, delta=0.0, neighbours=torch.tensor([[1], [2], [0]]), dice=dice, **w
    ),
    "multi-draft k=2": lambda dice, w: SV.multi_draft_sample(TARGET, DRAFT, drafts=2, gamma=1, dice=dice, **w),
}
WARPS = {"T=1": dict(temperature=1.0), "T=0.6 top-k=2": dict(temperature=0.6, top_k=2)}


@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_exact_variants_reproduce_the_target_distribution_by_enumeration(variant, warp):
    dist = output_distribution(lambda dice: EXACT_VARIANTS[variant](dice, WARPS[warp])[0])
    reference = TARGET.chain_rule(**WARPS[warp])
    assert abs(sum(dist.values()) - 1) < 1e-12
    assert max_gap(dist, reference) < 1e-9
    assert max_gap(DRAFT.chain_rule(**WARPS[warp]), reference) > 0.05  # the draft alone is far from it


def _buggy_residual(p, q):  # the classic bug: resample from p instead of norm(max(0, p - q))
    return p


def _buggy_verify(real):  # the bonus token drawn from p at the last guess instead of the position after it
    def verify(p, q, drafts, dice, p_at_drafts=None):
        if p.shape[1] > drafts.shape[1]:
            p = torch.cat([p[:, :-1], p[:, -2:-1]], 1)
        return real(p, q, drafts, dice, p_at_drafts)

    return verify


def _misreporting_draft(real):  # the draft samples at temperature T, the ratio uses its T = 1 distribution
    def draft_tokens(draft, tokens, g, dice):
        guesses, q = real(draft, tokens, g, dice)
        raw = [
            [draft.model.probs(tokens[r].tolist() + guesses[r, :i].tolist()) for i in range(g)]
            for r in range(tokens.shape[0])
        ]
        return guesses, torch.stack([torch.stack(row) for row in raw])

    return draft_tokens


NEGATIVE_CONTROLS = {
    "residual replaced by p": ("residual", lambda real: _buggy_residual),
    "bonus token from the wrong position": ("verify", _buggy_verify),
    "temperature applied to the target only": ("draft_tokens", _misreporting_draft),
}


@pytest.mark.parametrize("bug", NEGATIVE_CONTROLS)
def test_the_enumeration_test_catches_known_bugs(bug, monkeypatch):
    name, make = NEGATIVE_CONTROLS[bug]
    monkeypatch.setattr(S, name, make(getattr(S, name)))
    warp = dict(temperature=0.6)
    dist = output_distribution(lambda dice: S.speculative_sample(TARGET, DRAFT, gamma=1, dice=dice, **warp)[0])
    assert abs(sum(dist.values()) - 1) < 1e-12  # still a distribution, just the wrong one
    assert max_gap(dist, TARGET.chain_rule(**warp)) > 1e-3


# --- relaxed acceptance -------------------------------------------------------------------


def test_relaxed_distribution_stays_within_its_total_variation_budget():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(64, 16, generator=g).mul(2).softmax(-1)  # (64, V)
    codebook = torch.randn(16, 4, generator=g)
    neighbours = SV.codebook_neighbours(codebook, 5)  # (16, 5)
    dist = torch.cdist(codebook, codebook)
    assert (neighbours != torch.arange(16)[:, None]).all()
    assert (dist.gather(1, neighbours).diff(dim=1) >= 0).all()  # nearest first
    tokens = torch.randint(0, 16, (64,), generator=g)
    previous = p.gather(1, tokens[:, None])
    for delta in (0.0, 0.05, 0.2, 0.5, 1.0):
        relaxed = SV.relaxed_distribution(p, tokens, neighbours, delta)
        tv = 0.5 * (relaxed - p).abs().sum(-1)
        assert torch.allclose(relaxed.sum(-1), torch.ones(64)) and (relaxed >= 0).all()
        assert (tv <= delta + 1e-6).all()
        at_token = relaxed.gather(1, tokens[:, None])
        assert (at_token >= previous - 1e-7).all()  # a larger budget never lowers p~(x)
        previous = at_token
        if delta == 0:
            assert torch.equal(relaxed, p)
    # with the whole budget, every neighbour's mass is on the token
    assert torch.allclose(at_token[:, 0], p.gather(1, tokens[:, None])[:, 0] + p.gather(1, neighbours[tokens]).sum(1))


def test_relaxed_acceptance_is_not_exact_but_raises_acceptance():
    neighbours = torch.tensor([[1], [2], [0]])
    run = lambda delta: (
        lambda dice: SV.lantern_sample(TARGET, DRAFT, gamma=2, delta=delta, neighbours=neighbours, dice=dice)[0]
    )
    assert max_gap(output_distribution(run(0.3)), TARGET.chain_rule()) > 1e-3
    rates = tiny_acceptance_rates(SV.lantern_sample, "delta", (0.0, 0.2, 0.5))
    assert rates[0] < rates[1] < rates[2]


def tiny_acceptance_rates(sampler, knob: str, values) -> list:
    """The acceptance rate of a relaxed sampler (lantern_sample, gsd_sample) on two tiny GPTs whose 4 codes are
    each other's neighbours, for each value of its knob, from one generator."""
    g = torch.Generator().manual_seed(0)
    gpt_t, gpt_d = tiny_gpt(0), tiny_gpt(1)
    nb = torch.tensor([[1, 2], [2, 3], [3, 0], [0, 1]])
    return [
        sampler(gpt_t, gpt_d, 3000, gamma=2, neighbours=nb, generator=g, **{knob: v})[1]["acceptance"] for v in values
    ]


def one_step_output(p, q, accept):
    """The exact distribution of one speculative step: x ~ q kept with probability accept(x) (V,), else a draw
    from the residual norm(max(0, p - q)). p, q (V,) -> (V,)."""
    kept = q * accept
    return kept + (1 - kept.sum()) * S.residual(p[None], q[None])[0]


def test_grouped_acceptance_bends_each_step_no_more_than_its_extra_acceptance_allows():
    g = torch.Generator().manual_seed(0)
    V = 12
    neighbours = SV.codebook_neighbours(torch.randn(V, 3, generator=g), 4)  # (V, 4)
    tokens = torch.arange(V)
    for _ in range(40):
        p = torch.randn(V, generator=g).mul(1.5).softmax(-1).double()
        q = torch.randn(V, generator=g).mul(1.5).softmax(-1).double()
        exact = (p / q).clamp(max=1)
        torch.testing.assert_close(one_step_output(p, q, exact), p)  # the exact rule: the target itself
        for p_window in (0.0, 0.05, 0.2, 1.0):
            accept = SV.grouped_acceptance(p.expand(V, V), q.expand(V, V), tokens, neighbours, p_window)  # (V,)
            out = one_step_output(p, q, accept)
            tv = 0.5 * float((out - p).abs().sum())
            bound = float((q * (accept - exact).abs()).sum())  # r - p = sum_x q(x) (a(x) - a0(x)) (e_x - res)
            assert abs(float(out.sum()) - 1) < 1e-9 and (out >= 0).all() and tv <= bound + 1e-6
            if p_window == 0.0:
                torch.testing.assert_close(accept, exact)  # groups of one: exact
    # by hand: codes 0 -> 1 -> 2 -> 0 are neighbours; with p_window 0.25, 0's group is {0, 1} (|0.3 - 0.5| < 0.25),
    # 1's is {1, 2}, 2's only {2} (|0.5 - 0.2| >= 0.25): min(1, 0.8 / 0.7), min(1, 0.5 / 0.8), min(1, 0.2 / 0.3)
    p3, q3 = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    hand = SV.grouped_acceptance(p3.expand(3, 3), q3.expand(3, 3), torch.arange(3), torch.tensor([[1], [2], [0]]), 0.25)
    torch.testing.assert_close(hand, torch.tensor([1.0, 0.625, 2 / 3]))
    ids, in_group = SV.token_groups(p.expand(V, V), tokens, neighbours, 1.0)
    assert in_group.all() and torch.equal(ids[:, 0], tokens) and torch.equal(ids[:, 1:], neighbours)
    with pytest.raises(ValueError, match="p_window"):
        SV.token_groups(p, tokens[0], neighbours, 1.5)


def test_grouped_acceptance_is_not_exact_but_raises_acceptance():
    neighbours = torch.tensor([[1], [2], [0]])
    run = lambda w: lambda dice: SV.gsd_sample(TARGET, DRAFT, gamma=2, p_window=w, neighbours=neighbours, dice=dice)[0]
    assert max_gap(output_distribution(run(0.0)), TARGET.chain_rule()) < 1e-9  # groups of one: exact
    assert max_gap(output_distribution(run(1.0)), TARGET.chain_rule()) > 1e-3
    rates = tiny_acceptance_rates(SV.gsd_sample, "p_window", (0.0, 0.1, 1.0))
    assert rates[0] < rates[1] < rates[2]
    with pytest.raises(ValueError, match="neighbours must"):
        SV.gsd_sample(tiny_gpt(0), tiny_gpt(1), 2, neighbours=torch.tensor([[5, 1], [0, 1], [0, 1], [0, 1]]))


# --- the real implementation on tiny GPTs: chi-square against the exact distribution -------


def gpt_distribution(model, labels=None, **warp) -> torch.Tensor:
    """Exact p(sequence) of a RasterGPT by the chain rule over all V^L sequences -> (V^L,)."""
    seqs = torch.tensor(list(itertools.product(range(model.vocab_size), repeat=model.seq_len)))
    with torch.no_grad():
        probs = warp_logits(model(seqs, labels), **warp)  # (N, L, V)
    return probs.gather(-1, seqs[..., None])[..., 0].prod(-1).double()


def chi_square_pvalue(tokens, expected_probs, vocab):
    index = (tokens * vocab ** torch.arange(tokens.shape[1] - 1, -1, -1)).sum(1)
    counts = torch.bincount(index, minlength=expected_probs.numel()).double()
    expected = expected_probs * tokens.shape[0]
    keep = expected > 0
    if counts[~keep].sum() > 0:  # a sequence the hypothesis gives probability 0
        return 0.0
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


GPT_VARIANTS = {
    "speculative": lambda t, d, n, g, **w: S.speculative_sample(t, d, n, gamma=2, generator=g, **w),
    "jacobi": lambda t, d, n, g, **w: SV.jacobi_sample(t, n, window=2, generator=g, **w),
    "multi-draft": lambda t, d, n, g, **w: SV.multi_draft_sample(t, d, n, drafts=2, gamma=2, generator=g, **w),
}


@pytest.mark.parametrize("variant", GPT_VARIANTS)
def test_real_samplers_pass_a_chi_square_test_against_the_exact_distribution(variant):
    target, draft = tiny_gpt(0), tiny_gpt(1)
    warp = dict(temperature=0.8, top_k=3)
    n = 600 if variant == "multi-draft" else 4000
    tokens, trace = GPT_VARIANTS[variant](target, draft, n, torch.Generator().manual_seed(0), **warp)
    assert chi_square_pvalue(tokens, gpt_distribution(target, **warp), 4) > 1e-3
    assert chi_square_pvalue(tokens, gpt_distribution(draft, **warp), 4) < 1e-6  # the test has power
    assert trace["rounds"] < 3 * 3 and trace["target_passes"] == trace["rounds"]


def test_chi_square_test_rejects_a_buggy_residual(monkeypatch):
    monkeypatch.setattr(S, "residual", _buggy_residual)
    target, draft = tiny_gpt(0), tiny_gpt(1)
    tokens, _ = S.speculative_sample(target, draft, 4000, gamma=2, generator=torch.Generator().manual_seed(0))
    assert chi_square_pvalue(tokens, gpt_distribution(target), 4) < 1e-6


def test_batch_of_one_is_exact_too():
    """At n = 1 rounds keep up to gamma + 1 tokens (batches advance by their slowest row)."""
    target, draft = tiny_gpt(0), tiny_gpt(1)
    g = torch.Generator().manual_seed(1)
    tokens = torch.cat([S.speculative_sample(target, draft, 1, gamma=2, generator=g)[0] for _ in range(1500)])
    assert chi_square_pvalue(tokens, gpt_distribution(target), 4) > 1e-3


def test_acceptance_rate_matches_the_sum_of_min_p_q():
    target, draft = tiny_gpt(0, seq_len=6, vocab=8), tiny_gpt(1, seq_len=6, vocab=8)
    _, trace = S.speculative_sample(
        target, draft, 2000, gamma=3, temperature=2.5, generator=torch.Generator().manual_seed(0)
    )
    kept, alpha = trace["tested_kept"].double(), trace["tested_alpha"].double()
    se = (alpha * (1 - alpha)).sum().sqrt() / kept.numel()  # each decision is Bernoulli(alpha_i)
    assert 0.2 < trace["alpha"] < 0.9
    assert abs(kept.mean() - alpha.mean()) < 4 * se


# --- bookkeeping: KV-cache rollback, traces, guidance, inputs ---------------------------------


def test_greedy_variants_return_exactly_the_greedy_target_sequence():
    """At temperature 0 every variant must reproduce plain greedy decoding token for token: this fails
    on any off-by-one in the KV-cache rollback or the positions fed to the target."""
    target, draft = tiny_gpt(0, seq_len=12, vocab=6, n_classes=3), tiny_gpt(1, seq_len=12, vocab=6, n_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    for cfg in (1.0, 2.0):
        plain, _ = target.sample_tokens(4, labels, temperature=0, cfg_scale=cfg)
        runs = {
            "spec": S.speculative_sample(target, draft, 4, labels, gamma=3, temperature=0, cfg_scale=cfg),
            "self-draft": S.speculative_sample(target, target, 4, labels, gamma=5, temperature=0, cfg_scale=cfg),
            "jacobi": SV.jacobi_sample(target, 4, labels, window=4, init="above", temperature=0, cfg_scale=cfg),
            "multi": SV.multi_draft_sample(target, draft, 4, labels, drafts=3, temperature=0, cfg_scale=cfg),
        }
        for name, (tokens, trace) in runs.items():
            assert torch.equal(tokens, plain), name
            assert sum(k + 1 for k in trace["kept"]) >= 12 and trace["round_of"].max() == trace["rounds"] - 1
        assert runs["self-draft"][1]["rounds"] == 2  # a draft equal to the target: 6 tokens per pass


def decoder_tokens(model, n, labels, generator, **sampling):
    """Plain sampling written with speculative decoding's incremental Decoder, one token per feed."""
    dec = S.Decoder(model, n, labels, **sampling)
    tokens = torch.zeros(n, 0, dtype=torch.long)
    for t in range(model.seq_len):
        probs = dec.feed(tokens[:, -1:] if t else tokens)[:, -1]  # the first feed runs the class token
        tokens = torch.cat([tokens, sample_from_probs(probs, generator)[:, None]], 1)
    return tokens


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("sampling", [dict(), dict(cfg_scale=2.0, top_k=4), dict(temperature=0.7, top_p=0.8)])
def test_the_plain_sampling_loop_and_the_decoder_draw_identical_tokens(sampling, use_cache):
    """The exactness argument of notebook 07 compares speculative samplers with RasterGPT.sample_tokens:
    both must turn the same generator into the same tokens."""
    model = tiny_gpt(0, seq_len=12, vocab=6, n_classes=3)
    labels = torch.tensor([0, 1, 2, 1, 0])
    plain, _ = model.sample_tokens(
        5, labels, generator=torch.Generator().manual_seed(4), use_cache=use_cache, **sampling
    )
    incremental = decoder_tokens(model, 5, labels, torch.Generator().manual_seed(4), use_cache=use_cache, **sampling)
    assert torch.equal(plain, incremental)
    assert not torch.equal(plain, decoder_tokens(model, 5, labels, torch.Generator().manual_seed(5), **sampling))


def test_samplers_give_target_and_draft_back_their_training_mode():
    target, draft = tiny_gpt(0, seq_len=6, vocab=5), tiny_gpt(1, seq_len=6, vocab=5)
    for run in (
        lambda: S.speculative_sample(target, draft, 2, gamma=2),
        lambda: SV.jacobi_sample(target, 2, window=3),
        lambda: SV.multi_draft_sample(target, draft, 2, drafts=2, gamma=2),
        lambda: target.sample_tokens(2),
    ):
        target.train(), draft.train()
        run()
        assert target.training and draft.training
    target.eval()
    S.speculative_sample(target, draft, 2, gamma=2)
    assert not target.training and draft.training


def test_lantern_with_zero_budget_draws_the_same_tokens_as_speculative_sampling():
    target, draft = tiny_gpt(0, seq_len=8, vocab=6), tiny_gpt(1, seq_len=8, vocab=6)
    nb = SV.codebook_neighbours(torch.randn(6, 3), 2)
    a, ta = S.speculative_sample(target, draft, 50, gamma=3, generator=torch.Generator().manual_seed(3))
    b, tb = SV.lantern_sample(
        target, draft, 50, gamma=3, delta=0.0, neighbours=nb, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b) and ta["kept"] == tb["kept"]


def test_trace_records_the_origin_of_every_token():
    target, draft = tiny_gpt(0, seq_len=10, vocab=5), tiny_gpt(1, seq_len=10, vocab=5)
    tokens, trace = S.speculative_sample(target, draft, 1, gamma=4, generator=torch.Generator().manual_seed(0))
    assert trace["from_guess"].sum() == sum(trace["kept"])  # every kept guess, and nothing else
    assert trace["target_passes"] == trace["rounds"] and trace["draft_passes"] == sum(trace["guessed"])
    assert trace["round_of"][0].diff().ge(0).all()
    origin, last = (
        trace["origin"][0],
        torch.tensor([(trace["round_of"][0] == r).nonzero().max() for r in range(trace["rounds"])]),
    )
    assert (origin[last[:-1]] > 0).all() and (origin == 0).sum() == sum(
        trace["kept"]
    )  # each round ends with the target's token
    assert all((origin[last[r]] == 2) == (trace["kept"][r] == trace["guessed"][r]) for r in range(trace["rounds"] - 1))
    assert S.expected_tokens_per_pass(0.0, 4) == 1 and S.expected_tokens_per_pass(1.0, 4) == 5


def test_bad_arguments_raise_clear_errors():
    target, draft = tiny_gpt(0), tiny_gpt(1, vocab=5)
    with pytest.raises(ValueError, match="gamma"):
        S.speculative_sample(target, tiny_gpt(1), gamma=0)
    with pytest.raises(ValueError, match="disagree"):
        S.speculative_sample(target, draft)
    with pytest.raises(ValueError, match="init"):
        SV.jacobi_sample(target, init="diagonal")
    with pytest.raises(ValueError, match="delta"):
        SV.lantern_sample(target, tiny_gpt(1), delta=1.5, neighbours=torch.tensor([[1], [2], [3], [0]]))
    with pytest.raises(ValueError, match="temperature"):
        S.speculative_sample(target, tiny_gpt(1), temperature=-1)
    with pytest.raises(ValueError, match="labels"):
        SV.multi_draft_sample(target, tiny_gpt(1), 2, labels=[0])
