"""The wheel as users get it.

`python -m build` makes the sdist and then the wheel from the sdist, so a file the sdist lacks breaks the wheel
too; twine checks both. The wheel is installed, not editable, into a fresh virtual environment with nbclient and
ipykernel, which is then used only from a folder outside the source tree: `python -m minigen weights list`,
`python -m minigen sample` from shipped weights, the same weights' samples drawn from Python (the very images the
source tree draws), and notebook 00 executed in smoke mode. The new environment borrows this one's torch (see
share_torch); everything else the wheel requires is installed from the package index. About 80 s on 2 CPU cores.
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch
from packaging.requirements import Requirement

import minigen

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = "03_token_cpu"  # the token GPT with its VQ tokenizer inside: two shipped files, ten images in a second

# run by the installed wheel and by the source tree alike: one thread each, so both do the same arithmetic
SAMPLE = """
import sys, torch, minigen
from minigen.registry import load_model_shipped
torch.set_num_threads(1)
model = load_model_shipped(sys.argv[1], device="cpu")
images = model.sample(10, torch.arange(10), generator=torch.Generator().manual_seed(0))
torch.save({"images": images, "minigen": minigen.__file__}, sys.argv[2])
"""

# run by the new environment's python, whose own ipykernel then runs the notebook's kernel
EXECUTE = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
nbformat.write(nb, sys.argv[2])
"""


def run(cmd, **kwargs) -> str:
    """Run a command; on failure, fail the test with the end of what it printed."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done.stdout


def tracked_files() -> list[str]:
    """What a clone of the work tree holds, uncommitted work included: tracked and untracked files, less the
    ignored ones (build/, *.egg-info, data/, virtual environments)."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT)
    return sorted(name for name in set(listed.split("\0")) if name and (ROOT / name).is_file())


def requirements(name: str) -> list:
    """The installed distribution `name` and those it needs, following every requirement whose marker holds here."""
    found, todo = {}, [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        if dist.name.lower() not in found:
            found[dist.name.lower()] = dist
            needs = [Requirement(r) for r in dist.requires or []]
            todo += [r.name for r in needs if r.marker is None or r.marker.evaluate({"extra": ""})]
    return list(found.values())


def share_torch(shared: Path, site: Path):
    """Put this environment's torch, and what it needs, on the path of the environment whose site-packages is `site`:
    links to them in the folder `shared`, named by a .pth file. A copy would be 1.2 GB in 38,000 files, a minute to
    install and more to delete. pip sees the linked torch as installed and keeps it: the new environment runs this
    environment's build (the CPU build in CI), never the multi-GB CUDA build an unpinned install could pull."""
    shared.mkdir()
    for dist in requirements("torch"):
        # each top-level package or module, and the dist-info; not scripts (../../bin) nor the shared __pycache__
        for top in {f.parts[0] for f in dist.files or ()} - {"..", "__pycache__"}:
            if not (shared / top).exists():
                (shared / top).symlink_to(dist.locate_file(top))
    (site / "minigen-test-shared-torch.pth").write_text(f"{shared}\n")


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory(prefix="minigen-wheel-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def dist(work):
    """(wheel, sdist), built from a copy of the work tree: building in place would leave build/ and egg-info."""
    src = work / "src"
    for name in tracked_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "build", "--outdir", work / "dist", src])
    (wheel,), (sdist,) = (work / "dist").glob("*.whl"), (work / "dist").glob("*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def user(work, dist):
    """(python, env, cwd) of a user who pip-installed the wheel into a fresh virtual environment: none of this
    environment's packages but torch, none of its paths or minigen settings, a fresh data folder, and a working
    folder outside the tree."""
    venv, cwd = work / "venv", work / "user"
    cwd.mkdir()
    assert not cwd.resolve().is_relative_to(ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIGEN_", "PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        MINIGEN_SMOKE="1",
        MINIGEN_DATA=str(work / "data"),
        TQDM_DISABLE="1",
        # Jupyter's and IPython's settings from the user's home (a kernel spec named python3, startup files) stay out
        JUPYTER_CONFIG_DIR=str(work / "jupyter-config"),
        JUPYTER_DATA_DIR=str(work / "jupyter-data"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(work / "ipython"),
    )
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=env).strip())
    share_torch(work / "shared", site)
    # torch pinned to the linked build: pip can take no other (an unpinned one could be a multi-GB CUDA build)
    run([python, "-m", "pip", "install", dist[0], f"torch=={torch.__version__}", "nbclient", "ipykernel"], env=env)
    assert not (site / "torch").exists()  # pip kept the linked torch
    return python, env, cwd


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(dist):
    wheel, _ = dist
    assert wheel.name == f"minigen-{minigen.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    # every file of the package in the work tree: modules, exercises, the offline digits, the weights and manifest
    package = {name for name in tracked_files() if name.startswith("minigen/")}
    assert {"minigen/assets/mnist_subset.npz", "minigen/pretrained/manifest.json"} <= package
    assert {
        f"minigen/pretrained/{stem}.pt" for stem in json.loads((ROOT / "minigen/pretrained/manifest.json").read_text())
    } <= package
    assert package - names == set(), "missing from the wheel"
    # and nothing besides it and its metadata: no tests, notebooks, data or caches
    dist_info = f"minigen-{minigen.__version__}.dist-info/"
    assert {n for n in names if not n.startswith(dist_info)} - package == set(), "in the wheel but not the package"
    assert {f"{dist_info}{m}" for m in ("METADATA", "RECORD", "WHEEL", "licenses/LICENSE")} <= names


def test_the_sdist_holds_what_a_build_needs(dist):
    _, sdist = dist
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    package = {name for name in tracked_files() if name.startswith("minigen/")}
    assert {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO"} | package <= names
    stray = {n for n in names if n.split("/")[0] in ("tests", "notebooks", "solutions", "data", "docs", ".venv")}
    assert stray == set()


def test_twine_accepts_both(dist):
    out = run([sys.executable, "-m", "twine", "check", "--strict", *dist])
    assert out.count("PASSED") == 2, out


def test_installed_cli_lists_the_shipped_weights(user):
    python, env, cwd = user
    out = run([python, "-m", "minigen", "weights", "list"], env=env, cwd=cwd)
    lines = out.splitlines()
    manifest = json.loads((ROOT / "minigen/pretrained/manifest.json").read_text())
    assert len(lines) == len(manifest) > 0, out
    assert all(f" {stem} " in line for stem, line in zip(sorted(manifest), lines)), out


def test_installed_cli_samples_a_shipped_model(user):
    python, env, cwd = user
    out = run([python, "-m", "minigen", "sample", SHIPPED, "--n", "10", "--out", "samples.png"], env=env, cwd=cwd)
    assert "wrote 10 samples" in out
    picture = plt.imread(cwd / "samples.png")
    assert picture.ndim == 3 and picture.std() > 0.05  # a picture of digits, not a blank page


def test_installed_model_samples_what_the_source_tree_samples(user, work):
    python, env, cwd = user
    run([python, "-c", SAMPLE, SHIPPED, work / "wheel.pt"], env=env, cwd=cwd)
    run([sys.executable, "-c", SAMPLE, SHIPPED, work / "tree.pt"], env=env, cwd=cwd)
    installed, tree = (torch.load(work / f, weights_only=True) for f in ("wheel.pt", "tree.pt"))
    assert Path(installed["minigen"]).resolve().is_relative_to((work / "venv").resolve())
    assert Path(tree["minigen"]).resolve().is_relative_to(ROOT)
    images = installed["images"]
    assert images.shape == (10, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, tree["images"])  # same weights, same code, same seed: the same digits


def test_notebook_00_runs_in_smoke_mode_on_the_installed_wheel(user, work):
    python, env, cwd = user
    nb = nbformat.read(ROOT / "notebooks" / "00_overview.ipynb", as_version=4)
    # a first cell that fails unless the kernel runs in the new environment and imports minigen from the wheel
    venv = str((work / "venv").resolve())
    check = (
        "import sys, pathlib, minigen\n"
        f"assert pathlib.Path(sys.prefix).resolve() == pathlib.Path({venv!r}), sys.prefix\n"
        f"assert pathlib.Path(minigen.__file__).resolve().is_relative_to({venv!r}), minigen.__file__"
    )
    nb.cells.insert(0, nbformat.v4.new_code_cell(check))
    nbformat.write(nb, work / "00_overview.ipynb")
    run([python, "-c", EXECUTE, work / "00_overview.ipynb", work / "00_executed.ipynb"], env=env, cwd=cwd)
    executed = nbformat.read(work / "00_executed.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "preset: smoke" in text  # the last cell's run line: the smoke preset, not a cpu run
    assert (work / "data" / "00_pixelgpt_smoke.pt").is_file()  # it trained into the fresh data folder
