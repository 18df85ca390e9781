import functools
import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from minigen.raster import RasterGPT

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
# the device the device-dependent tests (test_device.py, test_precision.py) run on: the CPU in CI; the device check
# (tools/device_check.py) sets it to cuda on a lent GPU. MINIGEN_DEVICE is cleared for the tests (see below).
TEST_DEVICE = torch.device(os.environ.get("MINIGEN_TEST_DEVICE", "cpu"))


def committed_text(path) -> str:
    """The file at `path` as the next commit will hold it: git's staged copy, which is the last commit's unless a
    change was `git add`ed; the file on disk where git has none (no git, not a checkout, a file not added yet).

    The tests of the notebooks' content and stored outputs check the course as it ships. A learner who ran a
    notebook in JupyterLab (which saves as it goes: a half-run notebook too) or did its exercises changed only
    their own copy, and `git checkout notebooks/ solutions/` brings the committed ones back. A maintainer stages a
    changed notebook (`git add`) to test it; CI's fresh clone has no difference to stage."""
    path = Path(path).resolve()
    try:  # ":./NAME": the index's copy of NAME, relative to the folder it is in
        git = subprocess.run(["git", "show", f":./{path.name}"], cwd=path.parent, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):  # no git
        return path.read_text(encoding="utf-8")
    return git.stdout.decode("utf-8") if git.returncode == 0 else path.read_text(encoding="utf-8")


@functools.cache
def _committed_text(path: Path) -> str:  # a notebook is read by several tests: ask git once
    return committed_text(path)


def committed_notebook(path) -> dict:
    """The notebook at `path` as committed (see committed_text), parsed."""
    return json.loads(_committed_text(Path(path).resolve()))


def pytest_report_header(config):
    """Name the notebooks whose working copy differs from git's: their tests read git's copy (committed_text)."""
    try:
        git = subprocess.run(
            ["git", "diff", "--name-only", "--", "notebooks/*.ipynb", "solutions/*.ipynb"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    changed = git.stdout.split() if git.returncode == 0 else []
    if changed:
        names = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"notebooks: the content tests read git's copy of {names}, not the changed file (git add it to test it)"
    return None


def solution_function(notebook: str, name: str):
    """The function `name` as defined in the cell tagged "implement-it" of solutions/<notebook>: tests run the
    very code the solutions show, not a copy of it."""
    nb = committed_notebook(SOLUTIONS / notebook)
    cells = [c for c in nb["cells"] if "implement-it" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise LookupError(f"solutions/{notebook} must have exactly one cell tagged implement-it, has {len(cells)}")
    namespace = {}
    exec("".join(cells[0]["source"]), namespace)  # the cell defines the function (its imports included)
    if name not in namespace:
        raise LookupError(f"the implement-it cell of solutions/{notebook} defines no {name}")
    return namespace[name]


class TinyGPT(RasterGPT):
    """A RasterGPT whose tokens are the data: for tests of samplers, which never need images."""

    def to_tokens(self, x):
        return x

    def to_images(self, tokens):
        return tokens


def tiny_gpt(seed, seq_len=3, vocab=4, n_classes=0, n_layer=1):
    torch.manual_seed(seed)
    model = TinyGPT(seq_len, vocab, n_classes, 0.0, n_layer=n_layer, n_head=2, n_embd=16, dropout=0.0)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # far from uniform, and target != draft
    return model.eval()


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    """Tests never touch the user's data/ folder: caches and downloads go to a temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIGEN_DATA", str(tmp_path_factory.mktemp("minigen-data")))
    mp.delenv("MINIGEN_DEVICE", raising=False)
    yield
    mp.undo()


@pytest.fixture
def force_guidance(monkeypatch):
    """force_guidance() makes cfg_scale=1 with labels take the guided path (a conditional and an unconditional
    row per image, logits mixed), which samplers otherwise skip as a shortcut; it returns the list of batch
    sizes the transformer sees from then on."""
    from minigen.nn import ClassEmbedding, Transformer

    def force():
        original, forward, rows = ClassEmbedding.sampling_labels, Transformer.forward, []

        def always_guided(self, n, labels, cfg_scale=1.0):
            if labels is None or cfg_scale != 1.0:
                return original(self, n, labels, cfg_scale)
            return original(self, n, labels, 2.0)[0], True  # the guided layout: n labels, then n null labels

        def counting_forward(self, x, *args, **kwargs):
            rows.append(x.shape[0])
            return forward(self, x, *args, **kwargs)

        monkeypatch.setattr(ClassEmbedding, "sampling_labels", always_guided)
        monkeypatch.setattr(Transformer, "forward", counting_forward)
        return rows

    return force


def swap_guidance(monkeypatch, module):
    """A planted bug: guidance that mixes towards the unconditional logits instead of away from them."""
    monkeypatch.setattr(module, "cfg_mix", lambda cond, uncond, scale: cond + scale * (uncond - cond))


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may write into: a read-only one, or for root (who ignores permissions) /sys/kernel."""
    folder = Path("/sys/kernel") if os.geteuid() == 0 else tmp_path / "read-only"
    if folder != Path("/sys/kernel"):
        folder.mkdir()
        folder.chmod(0o555)
    try:
        tempfile.NamedTemporaryFile(dir=folder).close()
        pytest.skip(f"{folder} is writable here")
    except OSError:
        pass
    yield folder
    if folder != Path("/sys/kernel"):
        folder.chmod(0o755)


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """A real SIGINT raises KeyboardInterrupt in the tests that send one, also where pytest was started as a
    background job: a non-interactive shell starts those with SIGINT ignored, and Python then installs no handler."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
