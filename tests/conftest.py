import pytest

from ecgrisk.paths import shared_data


@pytest.fixture(scope="session")
def shared():
    """../shared/data, or skip the test cleanly when it is absent."""
    root = shared_data()
    if root is None:
        pytest.skip("../shared/data is absent")
    return root


@pytest.fixture(scope="session")
def ptbxl_root(shared):
    root = shared / "ptb-xl"
    if not (root / "ptbxl_database.csv").is_file():
        pytest.skip("shared PTB-XL subset is absent")
    return root
