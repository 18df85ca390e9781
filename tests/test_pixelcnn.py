import pytest
import torch

from minigen.data import BinaryPatterns, make_loader
from minigen.pixel_ar import GatedPixelCNN, MaskedConv2d, PixelCNNConfig, naive_pixelcnn
from minigen.train import fit


def model(**kw):
    torch.manual_seed(0)
    cfg = dict(
        image_size=7, n_levels=2, n_classes=10, channels=8, n_layer=5, kernel=3, first_kernel=3, head_channels=16
    )
    cfg.update(kw)
    m = GatedPixelCNN(PixelCNNConfig(**cfg)).eval()
    for p in m.parameters():  # large random weights: no accidental zero gradients
        torch.nn.init.normal_(p, std=0.3)
    return m


def dependency(net, size=7, labels=None, levels=False):
    """dep[i, j] = True iff the output at pixel i has a non-zero gradient wrt input pixel j."""
    x = torch.rand(1, 1, size, size, requires_grad=True)
    out = net(x, labels) if labels is not None or levels else net(x)
    dep = torch.zeros(size * size, size * size, dtype=torch.bool)
    for i in range(size * size):
        r, c = divmod(i, size)
        (grad,) = torch.autograd.grad(out[0, :, r, c].square().sum(), x, retain_graph=True)
        dep[i] = grad.flatten() != 0
    return dep


@pytest.mark.parametrize("n_levels", [2, 256])
@pytest.mark.parametrize("conditional", [True, False])
def test_gated_pixelcnn_is_exactly_causal_and_has_no_blind_spot(n_levels, conditional):
    net = model(n_levels=n_levels, n_classes=10 if conditional else 0, n_layer=7)
    dep = dependency(net, labels=torch.tensor([4]) if conditional else None, levels=True)
    before = torch.ones(49, 49, dtype=torch.bool).tril(-1)  # j < i
    assert not (dep & ~before).any(), "an output depends on its own pixel or a later one"
    # 7 layers of 3x3 reach 7 rows up and 7 columns either side: on 7x7 that is every earlier pixel
    assert torch.equal(dep, before), "some earlier pixel is invisible: a blind spot"


def test_naive_masked_stack_has_a_blind_spot():
    torch.manual_seed(0)
    net = naive_pixelcnn(n_layer=6, channels=8)
    dep = dependency(net)
    before = torch.ones(49, 49, dtype=torch.bool).tril(-1)
    assert not (dep & ~before).any()  # still causal
    i = 3 * 7 + 3  # pixel (3, 3): its receptive field should include (2, 5), up and to the right
    assert not dep[i, 2 * 7 + 5], "the naive stack should miss pixels up and to the right"
    assert dep[i, 2 * 7 + 3] and dep[i, 3 * 7 + 2]  # but sees straight up and left


def test_masked_conv_masks():
    a, b = MaskedConv2d(1, 1, 3, "A").mask[0, 0], MaskedConv2d(1, 1, 3, "B").mask[0, 0]
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_windowed_logits_equal_the_full_network():
    net = model(image_size=12, n_layer=3)
    x, labels = torch.rand(2, 1, 12, 12), torch.tensor([1, 2])
    full = net(x, labels)
    for r in range(12):
        for c in range(12):
            torch.testing.assert_close(net.logits_at(x, labels, r, c), full[:, :, r, c])

    class TooNarrow(GatedPixelCNN):  # one row/column less than `reach` must change some logits
        reach = net.reach - 1

    narrow = TooNarrow(net.config).eval()
    narrow.load_state_dict(net.state_dict())
    worst = max(
        (narrow.logits_at(x, labels, r, c) - full[:, :, r, c]).abs().max().item() for r in range(12) for c in range(12)
    )
    assert worst > 1e-3, "reach is larger than needed: the window test proves nothing"


def test_sampling_is_reproducible_and_completion_keeps_given_pixels():
    net = model()
    a = net.sample(3, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    b = net.sample(3, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    given = (torch.rand(3, 1, 7, 7) > 0.5).float()
    done = net.complete(given, n_given=20, labels=torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(done.view(3, -1)[:, :20], given.view(3, -1)[:, :20])
    images, trace = net.sample(2, return_trace=True)
    assert torch.equal(trace["frames"][-1], images) and trace["passes"] == 49
    grey = model(n_levels=256).sample(2, temperature=0.8)
    assert grey.shape == (2, 1, 7, 7) and 0 <= grey.min() and grey.max() <= 1


def test_bad_inputs_raise_clear_errors():
    net = model()
    with pytest.raises(ValueError, match="labels"):
        net.sample(2, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\(B, 1, 7, 7\)"):
        net.loss((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="float"):
        net(torch.ones(1, 1, 7, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="completion"):
        net.complete(torch.rand(2, 1, 5, 5), n_given=3)
    with pytest.raises(ValueError, match="odd"):
        GatedPixelCNN(PixelCNNConfig(kernel=4))


def test_learns_a_known_distribution_to_within_5_percent_of_its_entropy():
    torch.manual_seed(0)
    patterns = BinaryPatterns(size=3, n_patterns=6, flip=0.05, seed=0)
    net = GatedPixelCNN(
        PixelCNNConfig(image_size=3, n_classes=0, channels=32, n_layer=3, kernel=3, first_kernel=3, head_channels=64)
    )
    fit(net, make_loader(patterns.dataset(16384, seed=1), 128), steps=500, lr=3e-3, progress=False)
    test_images = patterns.sample(4000, torch.Generator().manual_seed(2))
    with torch.no_grad():
        nll = float(net.nll((test_images, None)).mean())
    entropy = patterns.entropy()
    assert entropy - 0.1 < nll < 1.05 * entropy, f"test NLL {nll:.3f} nats vs entropy {entropy:.3f}"
