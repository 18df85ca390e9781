"""tools/release.py, the stamp a maintainer writes when publishing (README, "Publishing"), tested on copies of the
real notebooks, solutions and README: stamping twice changes nothing, another tag replaces the stamp, `check` names
what is unstamped, `unstamp` gives back the very bytes, and a stamped notebook still runs under nbval, stays
ruff-clean and passes the committed notebooks' own checks. The install cell installs only where minigen is missing.
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_exercise_order
import test_notebook_outputs

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("release", ROOT / "tools" / "release.py")
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)

URL, TAG = "https://github.com/someone/minigen", "v0.2.0"
CHEAPEST = "notebooks/03_token_ar.ipynb"  # about 8 s in the smoke preset on 2 cores: the one run under nbval here


def copy_repo(dest: Path) -> dict:
    """The files stamping touches, copied to `dest` (with pyproject.toml for ruff); their bytes."""
    for folder in ("notebooks", "solutions"):
        (dest / folder).mkdir(parents=True)
        for path in (ROOT / folder).glob("*.ipynb"):
            shutil.copyfile(path, dest / folder / path.name)
    for name in ("README.md", "pyproject.toml"):
        shutil.copyfile(ROOT / name, dest / name)
    return snapshot(dest)


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in release.files(root)}


def run(root: Path, *args) -> tuple[int, str]:
    """`python tools/release.py --root ROOT ARGS`, run in this process: its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = release.main(["--root", str(root), *args])
    return code, out.getvalue()


def tiny_notebook(title: str) -> str:
    cells = [
        {"cell_type": "markdown", "id": "t", "metadata": {}, "source": [f"# {title}"]},
        {"cell_type": "code", "execution_count": 1, "id": "c", "metadata": {}, "outputs": [], "source": ["x = 1"]},
    ]
    return release.dump({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def tiny_repo(root: Path, names=("notebooks/00_a.ipynb", "notebooks/01_b.ipynb", "solutions/00_a.ipynb")) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(tiny_notebook(name), encoding="utf-8")
    (root / "README.md").write_text("# tiny\n\nA course.\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def stamped_copy(tmp_path_factory) -> Path:
    """The real files stamped by the command a maintainer types (a fresh Python running the script)."""
    root = tmp_path_factory.mktemp("stamped")
    stamps = len(copy_repo(root))  # every notebook, every solutions notebook and README
    command = [sys.executable, "tools/release.py", "--root", str(root), "stamp", "--url", URL, "--tag", TAG]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith(f"stamp: {stamps} files changed"), out.stdout + out.stderr
    return root


def test_stamp_twice_restamp_and_unstamp_give_back_the_very_bytes(tmp_path):
    originals = copy_repo(tmp_path)
    assert len(originals) == len(test_notebook_outputs.NOTEBOOKS) + len(test_notebook_outputs.SOLUTIONS) + 1
    code, out = run(tmp_path, "check")
    assert code == 1 and out.count(": not stamped") == len(originals)  # the repository as committed: unstamped

    assert run(tmp_path, "stamp", "--url", URL, "--tag", TAG)[0] == 0
    once = snapshot(tmp_path)
    assert all(once[name] != originals[name] for name in originals)
    assert run(tmp_path, "check") == (0, "every notebook and README.md carry the same stamp\n")
    assert run(tmp_path, "stamp", "--url", URL + ".git/", "--tag", TAG)[0] == 0  # the same repository, spelt otherwise
    assert snapshot(tmp_path) == once
    assert run(tmp_path, "stamp", "--url", URL, "--tag", TAG, "--check")[0] == 0

    code, out = run(tmp_path, "stamp", "--url", URL, "--tag", "v0.2.1", "--check")
    assert code == 1 and out.count("not yet stamped") == len(originals) and snapshot(tmp_path) == once
    assert run(tmp_path, "stamp", "--url", URL, "--tag", "v0.2.1")[0] == 0  # another tag replaces the stamp
    assert run(tmp_path, "check")[0] == 0
    assert not any(b"/blob/v0.2.0/" in data or b"@v0.2.0" in data for data in snapshot(tmp_path).values())

    assert run(tmp_path, "unstamp")[0] == 0
    assert snapshot(tmp_path) == originals
    assert run(tmp_path, "unstamp") == (0, "unstamp: 0 files changed\n")


def test_the_stamp_links_each_notebook_at_the_tag_and_installs_before_any_code(stamped_copy):
    for name in snapshot(stamped_copy):
        if not name.endswith(".ipynb"):
            continue
        cells = json.loads((stamped_copy / name).read_text())["cells"]
        assert [c["metadata"] for c in cells].count({"minigen": "stamp", "tags": ["remove-cell"]}) == 2
        title, badges, install = cells[:3]
        assert title["source"][0].startswith("# ") and title["metadata"] == {}
        assert "".join(badges["source"]) == (
            f"[![Open In Colab]({release.COLAB_BADGE})]"
            f"(https://colab.research.google.com/github/someone/minigen/blob/v0.2.0/{name}) "
            f"[![Open in Kaggle]({release.KAGGLE_BADGE})]"
            f"(https://kaggle.com/kernels/welcome?src=https://github.com/someone/minigen/blob/v0.2.0/{name})"
        )
        assert install["cell_type"] == "code" and install["execution_count"] is None and install["outputs"] == []
        assert '%pip install -q "minigen @ git+https://github.com/someone/minigen@v0.2.0"' in "".join(install["source"])
    readme = (stamped_copy / "README.md").read_text()
    assert readme.startswith(f"# minigen\n\n{release.README_BEGIN}\n[![Open In Colab]")
    assert "/blob/v0.2.0/notebooks/00_overview.ipynb)" in readme


@pytest.mark.parametrize(
    "url",
    [
        "http://github.com/someone/minigen",
        "https://gitlab.com/someone/minigen",
        "github.com/someone/minigen",
        "https://github.com/someone",
        "https://github.com/someone/minigen/tree/main",
        "https://github.com/-someone/minigen",
        "https://github.com/someone/..",
    ],
)
def test_a_url_that_is_not_a_github_repository_is_refused_and_nothing_written(tmp_path, url):
    before = snapshot(tiny_repo(tmp_path))
    code, out = run(tmp_path, "stamp", "--url", url, "--tag", TAG)
    assert code == 2 and out.startswith("error: --url must be a GitHub repository") and repr(url) in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("tag", ["main", "0.2", "v0.2.0 ", "v0.2.0..1", "v0.2.0/x", ""])
def test_a_tag_that_pins_nothing_is_refused(tmp_path, tag):
    before = snapshot(tiny_repo(tmp_path))
    code, out = run(tmp_path, "stamp", "--url", URL, "--tag", tag)
    assert code == 2 and out.startswith("error: --tag must be a release tag") and snapshot(tmp_path) == before


def test_a_tag_other_than_the_declared_version_is_refused(tmp_path):
    tiny_repo(tmp_path)
    (tmp_path / "minigen").mkdir()
    (tmp_path / "minigen" / "__init__.py").write_text('__version__ = "0.2.0"\n')
    code, out = run(tmp_path, "stamp", "--url", URL, "--tag", "v0.3.0")
    assert code == 2 and "declares (0.2.0)" in out and release.README_BEGIN not in (tmp_path / "README.md").read_text()
    assert run(tmp_path, "stamp", "--url", URL, "--tag", "v0.2.0-rc.1")[0] == 0  # a pre-release of 0.2.0 is fine


def test_check_names_unstamped_edited_and_differently_stamped_files(tmp_path):
    names = [f"notebooks/0{i}_x.ipynb" for i in range(4)]
    tiny_repo(tmp_path, names)
    assert run(tmp_path, "stamp", "--url", URL, "--tag", TAG)[0] == 0
    first, second, third = (tmp_path / name for name in names[:3])
    first.write_text(release.unstamp_notebook(first.read_text(), names[0]))
    second.write_text(second.read_text().replace("install -q", "install"))  # an edited install cell
    third.write_text(release.stamp_notebook(third.read_text(), names[2], URL, "v0.1.0"))
    code, out = run(tmp_path, "check")
    assert code == 1
    assert f"{names[0]}: not stamped" in out
    assert f"{names[1]}: its stamp was edited or damaged" in out
    assert f"stamped {URL} v0.1.0: 1 files, e.g. {names[2]}" in out
    assert f"stamped {URL} v0.2.0: 2 files, e.g. {names[3]}" in out  # the fourth notebook and README


def test_a_notebook_not_written_as_jupyter_writes_it_is_refused_before_any_file_changes(tmp_path):
    tiny_repo(tmp_path)
    odd = tmp_path / "solutions" / "00_a.ipynb"  # the last notebook: every other one would be stamped by then
    odd.write_text(json.dumps(json.loads(odd.read_text()), indent=2))
    before = snapshot(tmp_path)
    code, out = run(tmp_path, "stamp", "--url", URL, "--tag", TAG)
    assert code == 2 and "solutions/00_a.ipynb is not written as Jupyter writes it" in out
    assert snapshot(tmp_path) == before


def run_install_cell(tmp_path: Path, *python_flags) -> str:
    """The stamped install cell as IPython runs it (magics turned into calls, as the kernel does) in a fresh Python
    whose get_ipython() prints every magic it is asked to run instead of running it."""
    from IPython.core.inputtransformer2 import TransformerManager

    nb = json.loads(release.stamp_notebook(tiny_notebook("t"), "notebooks/00_t.ipynb", URL, TAG))
    [cell] = [c for c in nb["cells"] if c["cell_type"] == "code" and c["metadata"].get("minigen") == "stamp"]
    code = TransformerManager().transform_cell("".join(cell["source"]))
    shell = "class Shell:\n    def run_line_magic(self, name, line):\n        print(name, line)\n\n"
    program = shell + "def get_ipython():\n    return Shell()\n\n" + code
    out = subprocess.run(
        [sys.executable, *python_flags, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_install_cell_is_a_no_op_where_minigen_is_installed_and_pins_the_tag_where_not(tmp_path):
    assert run_install_cell(tmp_path) == ""  # minigen is installed here: no pip
    # -S -I: no site-packages, so no minigen, as in a fresh Colab or Kaggle kernel
    assert run_install_cell(tmp_path, "-S", "-I") == f'pip install -q "minigen @ git+{URL}@{TAG}"\n'


def test_stamped_notebooks_stay_ruff_clean(stamped_copy):
    for command in (["check"], ["format", "--check"]):
        out = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
            cwd=stamped_copy,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_stamped_notebooks_pass_the_committed_notebooks_checks(stamped_copy):
    """What tests/test_notebook_outputs.py and tests/test_exercise_order.py ask of each committed notebook, asked of
    its stamped copy: publishing must not fail CI."""
    for module in (test_notebook_outputs, test_exercise_order):
        for name in dir(module):
            check = getattr(module, name)
            marks = getattr(check, "pytestmark", [])
            for mark in (m for m in marks if m.name == "parametrize" and m.args[0] == "path"):
                for path in mark.args[1]:
                    check(stamped_copy / path.relative_to(ROOT))


def test_a_stamped_notebook_runs_under_nbval_in_the_smoke_preset(stamped_copy, tmp_path):
    notebook = stamped_copy / CHEAPEST
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(notebook.read_text())["cells"])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings: they would collect tests/
    env = dict(os.environ, MINIGEN_SMOKE="1", TQDM_DISABLE="1", MINIGEN_DATA=str(tmp_path / "data"))
    env.pop("PYTEST_ADDOPTS", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini")]
        + ["--rootdir", str(tmp_path), "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=120", str(notebook)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # every cell, the install cell among them, passed: none failed, none was skipped or marked xfail by a timeout
    summary = re.search(rf"^{code_cells} passed(, \d+ warnings?)? in ", out.stdout, re.M)
    assert out.returncode == 0 and summary, out.stdout[-3000:] + out.stderr[-2000:]


def test_the_website_leaves_the_stamp_off(stamped_copy):
    """The site is checked offline with no request leaving it (tests/test_website.py): a published (stamped) course
    must build the same, so the badges' off-site images and the install cell stay off its pages. Notebook cells:
    myst-nb's remove-cell tag; README: docs/conf.py drops the marked block while Sphinx reads it."""
    for path in release.files(stamped_copy):
        if path.suffix == ".ipynb":
            stamped = [c for c in json.loads(path.read_text())["cells"] if c["metadata"].get("minigen") == "stamp"]
            assert len(stamped) == 2 and all("remove-cell" in c["metadata"]["tags"] for c in stamped), path.name
    spec = importlib.util.spec_from_file_location("site_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    readme = (stamped_copy / "README.md").read_text()
    assert release.README_BEGIN in readme and "colab-badge" in readme
    source = [readme]
    app = type("App", (), {"srcdir": str(stamped_copy)})()
    conf.add_navigation(app, conf.root_doc, source)
    assert release.README_BEGIN not in source[0] and "colab-badge" not in source[0] and "kaggle.com" not in source[0]
    assert source[0].startswith((ROOT / "README.md").read_text().split("\n", 1)[0])  # the title stays
