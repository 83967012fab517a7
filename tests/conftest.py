import pytest
import torch

import scoresde as sd


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is as fast, and far faster while other processes load the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingNet:
    """Wraps an oracle's net to count calls independently of ScoreModel.nfe."""

    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def all_sdes():
    return [sd.VPSDE(), sd.CosineVPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.EDMSDE()]


@pytest.fixture(params=all_sdes(), ids=lambda s: type(s).__name__)
def any_sde(request):
    return request.param


def interior_times(sde, n=7, dtype=torch.float64):
    """Times strictly inside (t_eps, T)."""
    return torch.linspace(sde.t_eps, sde.T, n + 2, dtype=dtype)[1:-1]
