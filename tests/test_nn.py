import pytest
import torch

from minigen.nn import ClassEmbedding, Transformer, TransformerConfig, block_causal_mask, causal_mask
from minigen.sampling import cfg_mix, check_labels, check_sampling_args, sample_from_probs, sample_logits, warp_logits


def tiny(pos="learned", max_len=12, n_layer=2):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(n_layer=n_layer, n_head=2, n_embd=16, max_len=max_len, pos=pos)).eval()


def input_jacobian_support(model, mask, T):
    """support[i, j] = True iff output position i has a non-zero gradient wrt input position j."""
    x = torch.randn(1, T, 16, requires_grad=True)
    y = model(x, mask=mask)
    probe = torch.randn(16)  # a plain sum of a LayerNorm output is constant, so project randomly
    support = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        (grad,) = torch.autograd.grad((y[0, i] * probe).sum(), x, retain_graph=True)
        support[i] = grad[0].abs().sum(-1) > 0
    return support


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_causal_mask_leaks_nothing(pos):
    T = 9
    support = input_jacobian_support(tiny(pos), "causal", T)
    assert torch.equal(support, causal_mask(T)), "output i must depend on exactly the inputs <= i"


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_block_causal_mask_leaks_nothing(pos):
    sizes = [1, 4, 2, 3]
    mask = block_causal_mask(sizes)
    support = input_jacobian_support(tiny(pos, max_len=10), mask, 10)
    assert torch.equal(support, mask)
    # every token of block k sees the whole of blocks <= k, including later tokens of its own block
    assert support[1, 4] and not support[1, 5]


def test_full_mask_sees_everything():
    assert input_jacobian_support(tiny(), "full", 6).all()


def test_block_causal_mask_shape_and_errors():
    m = block_causal_mask([1, 2])
    assert m.tolist() == [[True, False, False], [True, True, True], [True, True, True]]
    with pytest.raises(ValueError, match="block_sizes"):
        block_causal_mask([2, 0])


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("mask_kind", ["causal", "block"])
def test_kv_cache_equals_recompute(pos, mask_kind):
    model = tiny(pos, max_len=12)
    sizes = [1, 2, 3, 6]
    mask = block_causal_mask(sizes) if mask_kind == "block" else "causal"
    x = torch.randn(3, 12, 16)
    full = model(x, mask=mask)
    cache = model.new_cache(3)
    chunks = sizes if mask_kind == "block" else [1, 3, 1, 1, 6]  # prefill, then appends
    outs = feed_in_chunks(model, x, mask, cache, chunks)
    assert cache.length == 12
    torch.testing.assert_close(outs, full, atol=1e-5, rtol=1e-5)


def feed_in_chunks(model, x, mask, cache, chunks):
    """The outputs of x (B, T, C) fed through the cache in consecutive chunks of these sizes, (B, T, C)."""
    outs, start = [], 0
    for size in chunks:
        outs.append(model(x[:, start : start + size], mask=mask, cache=cache))
        start += size
    return torch.cat(outs, 1)


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("mask_kind", ["causal", "block", "full"])
def test_static_cache_equals_recompute(pos, mask_kind):
    """All max_len slots are read, so the unwritten ones must be hidden whatever the mask allows."""
    model = tiny(pos)
    sizes = [1, 2, 3, 6]
    mask = {"block": block_causal_mask(sizes), "causal": "causal", "full": "full"}[mask_kind]
    x = torch.randn(3, 12, 16)
    chunks = sizes if mask_kind != "causal" else [1, 3, 1, 1, 6]
    static = model.new_cache(3, static=True)
    dynamic = model.new_cache(3)
    got = feed_in_chunks(model, x, mask, static, chunks)
    want = feed_in_chunks(model, x, mask, dynamic, chunks)
    assert static.k[0].shape[2] == 12 and static.length == 12
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if mask_kind == "causal":
        torch.testing.assert_close(got, model(x), atol=1e-5, rtol=1e-5)


def test_static_cache_rollback_leaves_no_trace():
    """After truncate, the stale keys of the rejected continuation stay in their slots: a later query must not
    see them, and a longer continuation overwrites them."""
    model = tiny()
    x, rejected = torch.randn(1, 9, 16), 5 * torch.randn(1, 4, 16)
    cache = model.new_cache(1, static=True)
    model(x[:, :5], cache=cache)
    model(rejected, cache=cache)  # slots 5-8 now hold keys of other tokens
    cache.truncate(5)
    resumed = torch.cat([model(x[:, 5:6], cache=cache), model(x[:, 6:], cache=cache)], 1)
    torch.testing.assert_close(resumed, model(x)[:, 5:], atol=1e-5, rtol=1e-5)


def test_static_cache_reorder_is_in_place():
    model = tiny()
    cache = model.new_cache(3, static=True)
    model(torch.randn(3, 4, 16), cache=cache)
    buffers = [t.data_ptr() for t in cache.k + cache.v]
    before = cache.k[1].clone()
    cache.reorder(torch.tensor([2, 2, 0]))
    assert [t.data_ptr() for t in cache.k + cache.v] == buffers  # a compiled pass keeps reading these
    torch.testing.assert_close(cache.k[1], before[[2, 2, 0]])


def test_kv_cache_truncate_rolls_back():
    model = tiny(max_len=12)
    x, other = torch.randn(1, 8, 16), torch.randn(1, 3, 16)
    cache = model.new_cache(1)
    model(x[:, :5], cache=cache)
    model(other, cache=cache)  # a rejected continuation
    cache.truncate(5)
    resumed = model(x[:, 5:], cache=cache)
    torch.testing.assert_close(resumed, model(x)[:, 5:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(20)


def test_transformer_rejects_bad_input():
    model = tiny(max_len=4)
    with pytest.raises(ValueError, match="embeddings"):
        model(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randn(1, 5, 16))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(1, 3, 16), mask="diagonal")
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(n_embd=10, n_head=3)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(cfg_scale=float("nan")), "cfg_scale"),
    ],
)
def test_bad_sampling_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        check_sampling_args(**kwargs)


def test_labels_are_checked():
    with pytest.raises(ValueError, match="labels"):
        check_labels(torch.tensor([0, 10]), n_classes=10)
    with pytest.raises(ValueError, match="labels"):
        check_labels(torch.tensor([-1]), n_classes=10)
    with pytest.raises(ValueError, match="integers"):
        check_labels(torch.tensor([0.5]), n_classes=10)
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        check_labels(torch.tensor([1, 2]), n_classes=10, n=3)
    assert check_labels([3, 4], 10).tolist() == [3, 4]


def test_warp_logits_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(warp_logits(logits), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    torch.testing.assert_close(warp_logits(logits, top_k=2), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    # top-p keeps the smallest prefix whose mass reaches p: 0.5 + 0.3 >= 0.8
    torch.testing.assert_close(warp_logits(logits, top_p=0.8), torch.tensor([0.625, 0.375, 0.0, 0.0]))
    torch.testing.assert_close(warp_logits(logits, top_p=0.81), torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)
    assert warp_logits(logits, top_p=0.1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert warp_logits(logits, temperature=0).tolist() == [1.0, 0.0, 0.0, 0.0]
    sharp = warp_logits(logits, temperature=0.5)
    torch.testing.assert_close(sharp, torch.tensor([0.25, 0.09, 0.0225, 0.0025]) / 0.365)


def test_sampling_is_reproducible_and_matches_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.7])
    a = sample_from_probs(probs.expand(20000, 3), torch.Generator().manual_seed(1))
    b = sample_from_probs(probs.expand(20000, 3), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / 20000
    assert (freq - probs).abs().max() < 0.015  # ~5 standard errors
    sparse = sample_from_probs(
        torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0]).expand(5000, 5), torch.Generator().manual_seed(2)
    )
    assert set(sparse.unique().tolist()) == {1, 3}  # zero-probability indices are never drawn
    tokens = sample_logits(torch.randn(4, 7, 5), top_k=1)
    assert tokens.shape == (4, 7)


def test_cfg_mix():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(cfg_mix(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_mix(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg_mix(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def test_class_embedding_null_class_and_dropout():
    emb = ClassEmbedding(10, 8, drop_prob=0.5)
    null = emb(None, batch=3)
    torch.testing.assert_close(null, emb.embed.weight[10].expand(3, 8))
    emb.eval()
    torch.testing.assert_close(emb(torch.tensor([2])), emb.embed.weight[2:3])
    emb.train()
    torch.manual_seed(0)
    out = emb(torch.full((2000,), 4))
    dropped = (out == emb.embed.weight[10]).all(-1).float().mean()
    assert 0.45 < dropped < 0.55
    with pytest.raises(ValueError, match="labels"):
        emb(torch.tensor([11]))
