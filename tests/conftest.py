"""Fixtures shared by several test files."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: bit-for-bit comparisons need the same thread count for every
    product, and small models on a shared 2-core machine mostly wait for a busy core with
    a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_unconfigure(config):
    """A process that outlives its summary (a child it waits for at exit, a thread that
    never ends) would hold CI until its time limit: give it two minutes, then print every
    thread's stack and exit with an error."""
    import faulthandler
    faulthandler.dump_traceback_later(120, exit=True)
