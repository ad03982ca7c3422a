import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors run faster on one thread than on an oversubscribed pool; restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
