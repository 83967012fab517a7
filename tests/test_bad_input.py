"""Bad calls to the front door are refused before any work, naming the parameter, the accepted
values and what was given (issue 16 grows this file)."""
import pytest
import torch

import scoresde as sd
from scoresde.data.problems import get_problem

MODEL = get_problem("ring2d").score_model(sd.VPSDE())


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(0, 2)), r"shape\[0\] must be an integer >= 1; got 0"),
    (dict(shape=(4, -2)), r"shape\[1\] must be an integer >= 1; got -2"),
    (dict(shape=(4, 2.0)), r"shape\[1\] must be an integer >= 1; got 2.0"),
    (dict(shape="42"), r"shape must be a sequence \(B, \*data_shape\) of integers >= 1; got '42'"),
    (dict(shape=(4, 2), dtype=torch.int64), "dtype must be None or a real floating-point torch.dtype.*; got torch.int64"),
    (dict(shape=(4, 2), dtype=torch.complex64), "dtype must be None or a real floating-point.*; got torch.complex64"),
    (dict(x_T=[[0.0, 0.0]]), "x_T must be a real floating-point tensor.*; got 'list'"),
    (dict(x_T=torch.zeros(4, 2, dtype=torch.long)), "x_T must be a real floating-point tensor.*; got 'torch.int64 tensor'"),
    (dict(shape=(4, 2), generator=0), "generator must be None or a torch.Generator; got 'int'"),
    (dict(shape=(4, 2), callback="print"), "callback must be None or a callable; got 'str'"),
    (dict(shape=(4, 2), steps=float("inf")), "steps must be an integer >= 1; got inf"),
    (dict(shape=(4, 2), steps=2.5), "steps must be an integer >= 1; got 2.5"),
])
def test_sample_refuses_bad_types(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.sample(MODEL, **kwargs)


def test_sample_refuses_a_plain_function_as_model():
    with pytest.raises(ValueError, match="model must be a scoresde.ScoreModel .*; got 'function'"):
        sd.sample(lambda x, t: -x, sd.VPSDE(), shape=(4, 2))
