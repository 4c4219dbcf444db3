import os

os.environ.setdefault("GLOG_v", "3")

import pytest

from helpers import BASE, TINY, TINY_CLS, save_official, seeded_state


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="the fast tier: leave out the slow tests (subprocess training, msrun, base-size runs)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fast"):
        return
    fast = [item for item in items if "slow" not in item.keywords]
    config.hook.pytest_deselected(items=[item for item in items if "slow" in item.keywords])
    items[:] = fast


@pytest.fixture(scope="session")
def tiny_state():
    return seeded_state(TINY)


@pytest.fixture(scope="session")
def tiny_classifier_state():
    return seeded_state(TINY_CLS)


@pytest.fixture(scope="session")
def base_state():
    return seeded_state(BASE)


@pytest.fixture(scope="session")
def base_classifier_state():
    return seeded_state("vit_base_patch16")


@pytest.fixture
def tiny_pth(tmp_path, tiny_state):
    return save_official(tmp_path / "mae_tiny.pth", tiny_state)
