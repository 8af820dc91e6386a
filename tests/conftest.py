import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy():
    """The shipped toy-base with its SAE, loaded once."""
    import gremlinkit

    return gremlinkit.load("toy-base")
