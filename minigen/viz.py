"""Pictures for the notebooks: image grids, loss curves, attention masks, generation traces.

Every function draws with matplotlib and works without a live kernel (nbval, GitHub's
renderer). `show_frames` adds an ipywidgets slider when a live Jupyter kernel is there.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from minigen.files import writable_folder, write_atomically
from minigen.nn import in_jupyter


def make_grid(images, nrow: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Images (N, C, H, W) or (N, H, W) in [0, 1] -> one array (rows*H', cols*W'[, 3]) for imshow."""
    x = torch.as_tensor(images).detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W) or (N, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol_rows = int(np.ceil(n / nrow))
    grid = torch.full((c, ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    grid = grid.clamp(0, 1).numpy()
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def show_images(
    images, nrow: int | None = None, title: str | None = None, ax=None, cmap: str = "gray_r", size: float = 4.0
):
    """Draw a grid of images; dark ink on white (gray_r) suits digits."""
    grid = make_grid(images, nrow, pad_value=0.0 if cmap == "gray_r" else 1.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(size, size * grid.shape[0] / grid.shape[1]))
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def image_file(path) -> Path:
    """An output picture path whose format matplotlib writes and whose folder is writable (checked before the work
    that fills it)."""
    path = Path(path)
    formats = plt.gcf().canvas.get_supported_filetypes()
    plt.close()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ValueError(
            f"cannot write {path}: the file name must end in one of {', '.join('.' + f for f in sorted(formats))}"
        )
    writable_folder(path.parent)
    return path


def save_images(images, path, nrow: int | None = None, scale: int = 1):
    """Write a grid of images to a picture file (PNG, or the format the suffix names), each pixel drawn as a
    `scale` x `scale` block (nearest neighbour: a digit stays sharp, not blurred, when a viewer shows it large)."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    grid = make_grid(images, nrow, pad_value=0.0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # (rows*scale, cols*scale[, 3])
    write_atomically(path, lambda tmp: plt.imsave(tmp, grid, cmap="gray_r", vmin=0, vmax=1))


def save_series(series, path, max_lines: int = 8):
    """Write a plot of a few time series (N, T) to a PNG file."""
    x = torch.as_tensor(series).detach().cpu().numpy()
    if x.ndim != 2:
        raise ValueError(f"series must be (N, T), got {x.shape}")
    fig, ax = plt.subplots(figsize=(8, 3))
    for row in x[:max_lines]:
        ax.plot(row, lw=0.8)
    ax.set_xlabel("t")
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_coefficients(coeffs: dict, ax=None, title: str = "AR coefficients by lag"):
    """Bars of AR coefficients, one group per lag, one colour per estimator (e.g. true / fitted)."""
    if not coeffs:
        raise ValueError("no coefficients to plot")
    p = max(len(np.ravel(c)) for c in coeffs.values())
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / len(coeffs)
    for k, (name, c) in enumerate(coeffs.items()):
        c = np.ravel(np.asarray(c, dtype=float))
        ax.bar(np.arange(1, len(c) + 1) + (k - (len(coeffs) - 1) / 2) * width, c, width, label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("lag")
    ax.set_ylabel("weight")
    ax.set_xlim(0.3, p + 0.7)
    ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def plot_history(
    history: dict,
    ax=None,
    title: str = "training loss",
    reference: float | None = None,
    reference_label: str = "true entropy",
    ylabel: str = "loss",
):
    """Loss per step (faint), its moving average, eval points, and an optional reference line."""
    if not history.get("loss"):
        raise ValueError("history has no losses to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    ax.plot(steps, loss, color="C0", alpha=0.25, lw=0.8)
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, color="C0", label="train (moving average)")
    if history.get("eval_loss"):
        ax.plot(history["eval_step"], history["eval_loss"], "o-", color="C1", ms=3, label="eval")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=reference_label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False)
    return ax


def show_mask(mask, ax=None, title: str | None = None, block_sizes=None):
    """Draw an attention mask: row = query position, column = key position, dark = may attend."""
    m = torch.as_tensor(mask).detach().cpu().float().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1.2, interpolation="nearest")
    if block_sizes is not None:
        for edge in np.cumsum(block_sizes)[:-1]:
            ax.axhline(edge - 0.5, color="C3", lw=0.8)
            ax.axvline(edge - 0.5, color="C3", lw=0.8)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position")
    if title:
        ax.set_title(title)
    return ax


def _in_live_kernel() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return in_jupyter()


def _display_widget(widget, fallback: str) -> None:
    """Display an ipywidget whose stored text (what GitHub and an untrusted notebook show) is `fallback`, not
    the widget's repr."""
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    bundle["text/plain"] = fallback
    display(bundle, raw=True)


def knobs(draw, **sliders) -> None:
    """Sliders over `draw(**values)` in a live Jupyter kernel; nothing elsewhere (show fixed settings first).

    Each slider is `name=(value, min, max, step)`; `draw` makes its figure (plt.show() is called for it). It is
    redrawn when a slider is released, not at every intermediate value of a drag."""
    if not _in_live_kernel():
        return
    import ipywidgets as widgets

    controls = {}
    for name, spec in sliders.items():
        if len(spec) != 4:
            raise ValueError(f"slider {name!r} must be (value, min, max, step), got {spec!r}")
        value, lo, hi, step = spec
        kind = widgets.IntSlider if all(isinstance(v, int) for v in spec) else widgets.FloatSlider
        controls[name] = kind(value=value, min=lo, max=hi, step=step, description=name, continuous_update=False)

    def redraw(**values):
        draw(**values)
        plt.show()  # returns nothing: interact would print a returned tuple under the figure

    box = widgets.interactive(redraw, **controls)
    names = ", ".join(controls)
    _display_widget(box, f"[sliders for {names}: move them in a running notebook]")


def show_source(obj, title: str | None = None) -> None:
    """Display the source of a function or class from minigen, as a highlighted code block (plain text where
    Markdown is not rendered), so a notebook can walk through the library's decisive lines."""
    import inspect

    from IPython.display import display

    source = inspect.getsource(obj)
    where = f"{inspect.getmodule(obj).__name__}.{obj.__qualname__}"
    header = title or f"`{where}`"
    display({"text/markdown": f"{header}\n\n```python\n{source}```", "text/plain": source}, raw=True)


def show_frames(
    frames,
    titles=None,
    n_static: int = 8,
    nrow: int | None = None,
    interactive: bool | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
):
    """Show a generation trace: frames (F, N, C, H, W) or (F, C, H, W), one per step.

    Always draws a static row of `n_static` evenly spaced frames (what nbval and GitHub
    see). In a live Jupyter kernel it also displays a slider over every frame (released, not dragged, redraws).
    """
    frames = torch.as_tensor(frames).detach().cpu()
    if frames.dim() == 4:
        frames = frames.unsqueeze(1)
    if frames.dim() != 5:
        raise ValueError(f"frames must be (F, N, C, H, W) or (F, C, H, W), got {tuple(frames.shape)}")
    n_frames = frames.shape[0]
    titles = list(titles) if titles is not None else [f"frame {i + 1}" for i in range(n_frames)]
    if len(titles) != n_frames:
        raise ValueError(f"{len(titles)} titles for {n_frames} frames")
    pick = np.unique(np.linspace(0, n_frames - 1, min(n_static, n_frames)).round().astype(int))
    fig, axes = plt.subplots(1, len(pick), figsize=(size * len(pick), size * 1.15), squeeze=False)
    for ax, i in zip(axes[0], pick):
        show_images(frames[i], nrow=nrow, ax=ax, title=titles[i])
        ax.title.set_fontsize(8)
    if suptitle:
        fig.suptitle(suptitle)
    plt.show()
    if interactive is None:
        interactive = _in_live_kernel()
    if not interactive:
        return None
    import ipywidgets as widgets

    out = widgets.Output()

    def draw(i):
        out.clear_output(wait=True)
        with out:
            show_images(frames[i], nrow=nrow, title=titles[i], size=3)
            plt.show()

    # numbered from 1 like the titles ("step 1", "1 token"); continuous_update=False: redraw when the slider is
    # released, not for every frame a drag passes over
    slider = widgets.IntSlider(value=n_frames, min=1, max=n_frames, description="frame", continuous_update=False)
    slider.observe(lambda change: draw(change["new"] - 1), names="value")
    draw(n_frames - 1)
    _display_widget(
        widgets.VBox([slider, out]), f"[a slider over all {n_frames} frames: move it in a running notebook]"
    )


def label_points(ax, xs, ys, labels, fontsize: float = 7, pad_px: float = 2.0) -> list:
    """Annotate points (x, y) of `ax` with `labels` so that no two labels overlap and none covers a point: each
    label takes the first of a ring of offsets around its point whose box is free, else the least covered one.
    Call it after the layout is final (after tight_layout), since it places labels in display pixels."""
    if not len(xs) == len(ys) == len(labels):
        raise ValueError(f"need as many xs, ys and labels, got {len(xs)}, {len(ys)}, {len(labels)}")
    renderer = ax.figure.canvas.get_renderer()
    centres = ax.transData.transform(np.column_stack([xs, ys])) if len(xs) else np.zeros((0, 2))
    taken = [(cx - 4, cy - 4, cx + 4, cy + 4) for cx, cy in centres]  # the markers themselves
    ring = [
        (d * dx, d * dy)
        for d in (5, 14, 26)
        for dx, dy in ((1, 0.4), (1, -1.6), (-1, 0.4), (-1, -1.6), (0, 1.2), (0, -2.4))
    ]

    def covered(box) -> float:
        x0, y0, x1, y1 = box
        return sum(max(0, min(x1, b[2]) - max(x0, b[0])) * max(0, min(y1, b[3]) - max(y0, b[1])) for b in taken)

    texts = []
    for i in sorted(range(len(labels)), key=lambda i: -centres[i][1]):  # top to bottom
        best = None
        for dx, dy in ring:
            text = ax.annotate(
                labels[i],
                (xs[i], ys[i]),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
            )
            e = text.get_window_extent(renderer)
            box = (e.x0 - pad_px, e.y0 - pad_px, e.x1 + pad_px, e.y1 + pad_px)
            cost = covered(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])
        texts.append(best[1])
    return texts
