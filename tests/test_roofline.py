"""The true roofline of notebook 10: this machine's two ceilings, a pass's arithmetic intensity, and the plot."""

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from minigen import roofline  # noqa: E402
from minigen.roofline import Ceilings  # noqa: E402


def test_machine_ceilings_are_measured_on_the_requested_device(monkeypatch):
    seen, timed = [], roofline.timed

    def spy(device, fn, *args, **kwargs):
        seen.append((torch.device(device), fn()))  # what the timed call returns: the tensor it wrote
        return timed(device, fn, *args, **kwargs)

    monkeypatch.setattr(roofline, "timed", spy)
    c = roofline.machine_ceilings("cpu", megabytes=4, n=128, repeats=3)
    assert len(seen) == 6 and all(device == torch.device("cpu") and out.device.type == "cpu" for device, out in seen)
    assert {tuple(out.shape) for _, out in seen} == {(4 * 2**20 // 4,), (128, 128)}  # the copy and the matmul
    for value in (c.bandwidth, c.flops, c.ridge):
        assert math.isfinite(value) and value > 0
    assert c.ridge == pytest.approx(c.flops / c.bandwidth) and "cpu" in c.label
    assert c.attainable(c.ridge / 10) == pytest.approx(c.bandwidth * c.ridge / 10)
    assert c.attainable(c.ridge * 10) == c.flops
    with pytest.raises(ValueError, match="positive"):
        roofline.machine_ceilings("cpu", megabytes=4, n=128, repeats=0)
    with pytest.raises(ValueError, match="positive"):
        roofline.machine_ceilings("cpu", megabytes=0, n=128)


def test_the_datasheet_gpu_meets_its_ridge_where_the_datasheet_says():
    fp32, bf16 = roofline.H100_SXM["fp32"], roofline.H100_SXM["bf16"]
    assert (fp32.bandwidth, fp32.flops, bf16.flops) == (3.35e12, 67e12, 989e12)
    assert fp32.ridge == pytest.approx(20.0, abs=0.1) and bf16.ridge == pytest.approx(295.2, abs=0.1)


def test_intensity_of_a_pass_by_hand_on_a_tiny_model():
    model = roofline.timing_model(1, 1, 8, seq_len=16, vocab_size=10)
    P = sum(p.numel() for p in model.parameters())
    assert roofline.pass_flops(P, 2, 3) == 12 * P  # 2 P B T
    assert roofline.arithmetic_intensity(P) == 0.5  # one position, one row: 2P FLOP over 4P bytes
    assert roofline.arithmetic_intensity(P, 2, 3) == 3.0  # B T / 2
    kv = roofline.kv_cache_bytes(model, 2, 3, prefix=5)
    assert kv == 2 * 1 * 2 * (5 + 3) * 8 * 4  # keys and values, 1 layer, 2 rows, 8 positions, width 8, float32
    assert roofline.arithmetic_intensity(P, 2, 3, kv) == pytest.approx(12 * P / (4 * P + 1024))


def test_roofline_points_put_each_timed_pass_at_its_intensity_and_flop_rate():
    curve = {"new": {1: 1e-3, 4: 2e-3}, "batch": {1: 1e-3, 8: 4e-3}}
    points = roofline.roofline_points(curve, 1000, "m")
    got = {(p["batch"], p["new"]): (p["intensity"], p["flops"]) for p in points}
    assert got == {(1, 1): (0.5, 2e6), (1, 4): (2.0, 4e6), (8, 1): (4.0, 4e6)}
    assert len(points) == 4 and {p["label"] for p in points} == {"m"}


def by_gid(fig, gid):
    return [line for line in fig.axes[0].lines if line.get_gid() == gid]


def test_plot_roofline_draws_both_roofs_the_ridges_and_every_point():
    curves = {
        "small": {"new": {1: 1e-3, 4: 1.5e-3, 16: 4e-3}, "batch": {1: 1e-3, 8: 2e-3}},
        "large": {"new": {1: 4e-3, 4: 5e-3}, "batch": {1: 4e-3, 8: 6e-3, 64: 2e-2}},
    }
    params = {"small": 10_000, "large": 80_000}
    machine = Ceilings("this machine", 2e10, 2e11)
    fig = roofline.plot_roofline(curves, machine, roofline.H100_SXM, params=params)
    ax = fig.axes[0]
    assert isinstance(fig, plt.Figure) and (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    counts = {gid: len(by_gid(fig, gid)) for gid in ("bandwidth", "peak", "ridge", "gpu bandwidth", "gpu peak")}
    assert counts == {"bandwidth": 1, "peak": 1, "ridge": 1, "gpu bandwidth": 2, "gpu peak": 2}
    (ridge,) = by_gid(fig, "ridge")
    assert ridge.get_xdata()[0] == pytest.approx(10.0) and ridge.get_ydata()[0] == 2e11  # 2e11 / 2e10 FLOP/B
    (slope,) = by_gid(fig, "bandwidth")
    x, y = slope.get_xdata(), slope.get_ydata()
    assert y[0] / x[0] == pytest.approx(2e10) and x[-1] == pytest.approx(10.0)  # bandwidth * intensity up to it
    new, batch = by_gid(fig, "points new"), by_gid(fig, "points batch")
    assert len(new) == 2 and len(batch) == 2  # one series per axis per model
    assert list(new[0].get_xdata()) == [0.5, 2.0, 8.0]  # T / 2
    assert list(new[0].get_ydata()) == pytest.approx([2e4 / 1e-3, 8e4 / 1.5e-3, 32e4 / 4e-3])  # 2 P T / t
    assert list(batch[1].get_xdata()) == [0.5, 4.0, 32.0]  # B / 2
    texts = {t.get_text() for t in ax.texts}
    assert {"T=16", "B=8", "T=4", "B=64", "B=T=1"} <= texts
    # both models start at B=T=1: one label, at the higher of the two points (the large model's, 2 P / t = 4e7)
    (start,) = [t for t in ax.texts if t.get_text() == "B=T=1"]
    assert start.xy[1] == pytest.approx(2 * 80_000 / 4e-3)
    assert any("ridge 10 FLOP/B" in t for t in texts) and any("TB/s" in t for t in texts)
    plt.close(fig)


def test_plot_roofline_takes_one_curve_or_a_list_of_points():
    curve = {"new": {1: 1e-3, 2: 1.2e-3}, "batch": {1: 1e-3, 4: 2e-3}}
    machine = Ceilings("m", 1e10, 1e11)
    fig = roofline.plot_roofline(curve, machine, params=1000)
    assert len(by_gid(fig, "points new")) == 1 and by_gid(fig, "gpu peak") == []
    fig2 = roofline.plot_roofline(roofline.roofline_points(curve, 1000, "x"), machine, roofline.H100_SXM["fp32"])
    assert len(by_gid(fig2, "gpu peak")) == 1
    assert [list(a.get_xdata()) for a in by_gid(fig, "points new")] == [
        list(a.get_xdata()) for a in by_gid(fig2, "points new")
    ]
    with pytest.raises(ValueError, match="no points"):
        roofline.plot_roofline([], machine)
    plt.close("all")
