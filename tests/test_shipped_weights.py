"""The pretrained weights that ship in minigen/pretrained/ (the real set, not a test fixture).

They must cover every model notebooks 00-07 and 11-13 train (and the yardstick classifier), stay small, match their
manifest, load through the same path a notebook takes, and reproduce the numbers the committed notebooks print:
a learner who skips training sees what the course shows.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import committed_notebook

from minigen import registry, train, weights
from minigen.data import load_images
from minigen.metrics import dataset_nll

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(weights.__file__).resolve().parent / "pretrained"
MANIFEST = json.loads((PACKAGE / "manifest.json").read_text())


# checkpoint stem -> the registry recipe whose model its notebook trains (the variants of 01 and 02 change a field)
RECIPES = {
    "00_pixelgpt": "pixelgpt",
    "01_pixelcnn_binary": "pixelcnn",
    "02_vq": "vq",
    "03_token": "token",
    "04_msvq": "msvq",
    "04_var": "var",
    "05_maskgit": "maskgit",
    "06_ae": "ae",
    "06_mar": "mar",
    "07_draft": "draft",
    "11_flowar": "flowar",
    "11_xar": "xar",
    "12_nar": "nar",
    "12_dd": "dd",
    "13_cmar": "cmar",
    "13_cmar_draft": "cmar_draft",
}


def notebook_stems():
    """The checkpoint stems notebooks 00-07 and 11-13 pass to train_or_load, in the cpu preset (08 trains in seconds,
    09 and 10 reuse the others' weights)."""
    stems = set()
    for nb in sorted((ROOT / "notebooks").glob("[01][0-9]_*.ipynb")):
        if nb.name[:2] in ("08", "09", "10"):
            continue
        cells = committed_notebook(nb)["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")  # not an exercise's hint
        for stem in re.findall(r'data_dir\(\) / f"(\w+?)_\{PRESET\}\.pt"', source):
            stems.add(f"{stem}_cpu")
    # notebook 02 trains two tokenizers in a loop, data_dir() / f"02_{name}_{PRESET}.pt", and notebook 13 its target
    # and draft through one function, data_dir() / f"13_{name}_{PRESET}.pt": their names are in the code elsewhere
    return stems | {"02_vq_cpu", "02_vq_norestart_cpu", "13_cmar_cpu", "13_cmar_draft_cpu"}


def stored_output(notebook: str, pattern: str) -> float:
    """The first number a committed notebook printed after `pattern` (a regex with one group)."""
    nb = committed_notebook(ROOT / "notebooks" / notebook)  # as committed, not as a learner's run left it
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            match = re.search(pattern, "".join(output.get("text", "")))
            if match:
                return float(match.group(1))
    raise LookupError(f"{notebook} prints nothing matching {pattern!r}")


@pytest.fixture(autouse=True)
def real_weights(monkeypatch):
    monkeypatch.delenv("MINIGEN_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MINIGEN_TRAIN", raising=False)


def test_every_model_the_notebooks_train_ships_with_the_yardstick_classifier():
    assert set(MANIFEST) == notebook_stems() | {"classifier_mnist-subset"}


def test_the_set_is_small_and_every_file_matches_its_manifest_entry():
    total = 0
    for stem, entry in MANIFEST.items():
        path = PACKAGE / entry["file"]
        assert weights.sha256(path) == entry["sha256"], f"{path.name} differs from its manifest entry"
        assert entry["history"]["loss"], f"{stem}: no training history to plot"
        total += path.stat().st_size
    # 15 MB for notebooks 00-07 and the classifier, 9 MB for notebook 11's four models, 6 MB for notebook 12's
    # three and 2.5 MB for notebook 13's two (which name notebook 06's or 02's shipped tokenizer instead of carrying
    # a copy each)
    assert total < 34e6, f"the shipped weights take {total / 1e6:.1f} MB"


@pytest.mark.parametrize("stem", sorted(s for s in MANIFEST if not s.startswith("classifier")))
def test_each_shipped_model_loads_as_a_notebook_loads_it_without_training(stem, tmp_path, monkeypatch):
    model = registry.load_model_shipped(stem)
    assert model is not None, f"{stem} does not load"
    # built as its notebook builds it: the preset's recipe (tuples in its config, where the manifest has lists)
    name = RECIPES.get(stem.removesuffix("_cpu"))
    fresh = (
        registry.recipe(name, "cpu")["model"] if name else type(model)(type(model).Config(**MANIFEST[stem]["config"]))
    )

    def no_training(*args, **kwargs):
        raise AssertionError("train_or_load trained instead of using the shipped weights")

    monkeypatch.setattr(train, "fit", no_training)
    history = train.train_or_load(fresh, tmp_path / f"{stem}.pt", [], steps=MANIFEST[stem]["step"])
    assert history["loss"], "the loss curve comes from the stored history"
    for (name, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), f"{stem}: {name} differs between the two loading paths"


def test_the_yardstick_classifier_loads_without_training(monkeypatch, tmp_path):
    from minigen import metrics

    monkeypatch.setenv("MINIGEN_DATA", str(tmp_path))  # no checkpoint of its own: the shipped weights must do
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("the classifier was trained, not loaded"))
    classifier = metrics.digit_classifier(steps=metrics.CLASSIFIER_STEPS["cpu"])
    test = load_images("mnist-subset", "test")
    with torch.no_grad():
        accuracy = (classifier(test.images).argmax(-1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(0.982, abs=0.005)  # notebook 04 prints "classifier test accuracy 98.2%"


def test_the_pixel_transformer_reproduces_notebook_00s_test_nll():
    model = registry.load_model_shipped("00_pixelgpt_cpu")
    test = load_images(split="test", **registry.recipe("pixelgpt", "cpu")["data"])
    printed = stored_output("00_overview.ipynb", r"test NLL: ([\d.]+) nats per image")
    assert dataset_nll(model, test) == pytest.approx(printed, abs=0.1)


def test_the_gated_pixelcnn_reproduces_notebook_01s_test_nll():
    model = registry.load_model_shipped("01_pixelcnn_binary_cpu")
    test = load_images(split="test", **registry.recipe("pixelcnn", "cpu")["data"])
    printed = stored_output("01_pixel_ar.ipynb", r"test NLL, binarised mnist-subset \(500 images\): ([\d.]+) nats")
    assert dataset_nll(model, test) == pytest.approx(printed, abs=0.05)


def test_the_token_gpt_reproduces_notebook_03s_test_nll():
    vq = registry.load_model_shipped("02_vq_cpu")
    gpt = registry.load_model_shipped("03_token_cpu")
    test = load_images("mnist-subset", "test")
    with torch.no_grad():
        tokens = torch.cat([vq.encode(x) for x in test.images.split(500)])  # (500, 7, 7)
    nll = dataset_nll(gpt, torch.utils.data.TensorDataset(tokens, test.labels))
    assert nll == pytest.approx(stored_output("03_token_ar.ipynb", r"test NLL ([\d.]+) nats per image"), abs=0.1)
