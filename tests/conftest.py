import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    """Tests never touch the user's data/ folder: caches and downloads go to a temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINIGEN_DATA", str(tmp_path_factory.mktemp("minigen-data")))
    mp.delenv("MINIGEN_DEVICE", raising=False)
    yield
    mp.undo()
