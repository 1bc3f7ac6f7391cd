import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (they gain nothing from threads, and
    on a busy machine two threads made them a hundred times slower); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    # tests/test_html.py checks a built site; it runs after `fslib build` in `make test`.
    if config.getoption("-m") or any("test_html.py" in a for a in config.args):
        return
    skip = pytest.mark.skip(reason="HTML checks run after the book build: `make test` or `pytest tests/test_html.py`")
    for item in items:
        if "html" in item.keywords:
            item.add_marker(skip)
