import os

os.environ.setdefault("GLOG_v", "3")

import pytest

from helpers import BASE, TINY, TINY_CLS, save_official, seeded_state


@pytest.fixture(scope="session")
def tiny_state():
    return seeded_state(TINY)


@pytest.fixture(scope="session")
def tiny_classifier_state():
    return seeded_state(TINY_CLS)


@pytest.fixture(scope="session")
def base_state():
    return seeded_state(BASE)


@pytest.fixture
def tiny_pth(tmp_path, tiny_state):
    return save_official(tmp_path / "mae_tiny.pth", tiny_state)
