"""What a notebook stores when minigen draws progress, sliders and source: tested without a kernel by standing in
for IPython's display machinery (the real kernel path is exercised when the notebooks run in CI)."""

import sys
import types

import pytest
import torch

from minigen import nn as mnn
from minigen import train, viz
from minigen.train import fit, summary_line


class FakeKernel:
    """Records what would be displayed and replaced in place, as a Jupyter output area would keep it."""

    def __init__(self):
        self.outputs = {}  # display id -> the text it shows now
        self.order = []

    def display(self, obj, raw=False, display_id=None):
        key = len(self.order)
        self.order.append(key)
        self.outputs[key] = obj["text/plain"] if raw else repr(obj)
        outputs = self.outputs

        class Handle:
            def update(self, new, raw=False):
                outputs[key] = new["text/plain"] if raw else repr(new)

        return Handle()


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()
    monkeypatch.setattr(mnn, "in_jupyter", lambda: True)
    display_module = types.ModuleType("IPython.display")
    display_module.display = fake.display
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    # CI sets TQDM_DISABLE=1, which tqdm reads once, at import, into its default: these tests ask for the bar
    bar = mnn.progress_bar

    def shown_bar(iterable, progress=True, **kwargs):
        return bar(iterable, progress, **({"disable": False} if progress else {}), **kwargs)

    monkeypatch.setattr(mnn, "progress_bar", shown_bar)
    monkeypatch.setattr(train, "progress_bar", mnn.progress_bar)
    return fake


def test_a_progress_bar_in_jupyter_leaves_its_last_frame_not_its_first(kernel):
    for _ in mnn.progress_bar(range(300), desc="demo"):
        pass
    assert len(kernel.outputs) == 1  # one output, replaced in place: no pile of frames
    (shown,) = kernel.outputs.values()
    assert "300/300" in shown and "100%" in shown and " 0/300" not in shown


def test_outside_jupyter_the_bar_is_plain_tqdm(monkeypatch):
    monkeypatch.setattr(mnn, "in_jupyter", lambda: False)
    bar = mnn.progress_bar(range(3), progress=False)
    assert type(bar).__name__ == "tqdm" and list(bar) == [0, 1, 2]


def test_in_jupyter_is_false_in_a_plain_interpreter():
    assert mnn.in_jupyter() is False


class Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def loss(self, batch):
        return ((self.w - batch) ** 2).mean()


def test_training_ends_with_a_summary_line_of_steps_seconds_and_losses(kernel, capsys):
    data = [torch.ones(4)]
    history = fit(Line(), data, steps=20, lr=0.1, eval_data=data, eval_every=10, desc="line")
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == summary_line("line", history)
    assert printed.startswith("line: 20 steps in ") and "| train loss" in printed and "| test loss" in printed
    (bar,) = kernel.outputs.values()
    assert "20/20" in bar


def test_summary_line_averages_the_last_fifty_steps():
    history = {"step": list(range(1, 101)), "loss": [10.0] * 50 + [1.0] * 50, "seconds": 12.4}
    assert summary_line("m", history) == "m: 100 steps in 12 s | train loss 1.0000 (mean of the last 50)"


def test_sliders_and_frames_show_nothing_but_the_figure_without_a_kernel(capsys):
    calls = []
    assert viz.knobs(lambda t: calls.append(t), t=(1.0, 0.0, 2.0, 0.5)) is None
    assert calls == []  # no kernel: no slider, and the static figure before it is what the reader sees
    assert viz.show_frames(torch.rand(3, 1, 4, 4)) is None
    assert capsys.readouterr().out == ""


def test_a_slider_spec_must_have_four_numbers(monkeypatch):
    monkeypatch.setattr(viz, "_in_live_kernel", lambda: True)
    with pytest.raises(ValueError, match="value, min, max, step"):
        viz.knobs(lambda t: None, t=(1.0, 0.0, 2.0))


def test_show_source_displays_the_function_as_a_code_block(kernel):
    viz.show_source(summary_line)
    (shown,) = kernel.outputs.values()
    assert shown.startswith("def summary_line(")


def test_the_frame_slider_counts_from_one_like_the_titles(kernel, monkeypatch):
    """Slider position k shows the frame titled k ("step 5" at 5), not the one after it."""
    pytest.importorskip("ipywidgets")
    shown, widgets = [], []
    monkeypatch.setattr(viz, "show_images", lambda images, title=None, **kw: shown.append(title))
    monkeypatch.setattr(viz, "_display_widget", lambda widget, fallback: widgets.append(widget))
    viz.show_frames(torch.rand(5, 1, 4, 4), titles=[f"step {t + 1}" for t in range(5)], interactive=True)
    assert shown[-1] == "step 5"  # the static row, then the slider's first drawing: the last frame
    slider = widgets[0].children[0]
    assert (slider.min, slider.max, slider.value) == (1, 5, 5)
    slider.value = 2
    assert shown[-1] == "step 2"
