import math

import pytest
import torch

import scoresde as sd
from scoresde.data import (
    DIGITS_TEST_SIZE, DIGITS_TRAIN_SIZE, TOY_MIXTURES, TOYS, GaussianMixture, digits_split_indices, load_digits,
    sample_toy,
)


@pytest.mark.parametrize("name", TOYS)
def test_toys_shape_scale_and_determinism(name):
    x = sample_toy(name, 20000, torch.Generator().manual_seed(0))
    dim = 1 if name == "bimodal1d" else 2
    assert x.shape == (20000, dim) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert float(x.mean(0).abs().max()) < 0.35
    assert 0.6 < float(x.std(0).min()) and float(x.std(0).max()) < 1.3  # roughly unit scale
    assert torch.equal(x, sample_toy(name, 20000, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, sample_toy(name, 20000, torch.Generator().manual_seed(1)))
    y = TOYS[name](10, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert y.dtype == torch.float64


def test_toys_with_exact_truth_are_the_gaussian_mixtures():
    for name, make in TOY_MIXTURES.items():
        mix = make()
        assert isinstance(mix, GaussianMixture)
        torch.testing.assert_close(sample_toy(name, 50, torch.Generator().manual_seed(3)),
                                   mix.sample(50, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(GaussianMixture.ring().means.norm(dim=1), torch.full((8,), 1.5, dtype=torch.float64))


def test_toy_shapes():
    g = torch.Generator().manual_seed(0)
    board = sd.data.checkerboard(5000, g)
    assert float(board.abs().max()) <= 2
    # every point on a dark square: floor(x1) + floor(x2) even
    assert bool(((board.floor().sum(1)).remainder(2) == 0).all())
    counts = torch.bincount(((board[:, 0].floor() + 2) * 4 + board[:, 1].floor() + 2).long(), minlength=16)
    assert int((counts > 0).sum()) == 8 and int(counts[counts > 0].min()) > 500
    moons = sd.data.two_moons(5000, g, noise=0.0) / 1.4 + torch.tensor([0.5, 0.25])
    upper = (moons - torch.tensor([0.0, 0.0])).norm(dim=1)
    lower = (moons - torch.tensor([1.0, 0.5])).norm(dim=1)
    torch.testing.assert_close(torch.minimum((upper - 1).abs(), (lower - 1).abs()), torch.zeros(5000), atol=1e-5, rtol=0)
    roll = sd.data.swiss_roll(5000, g, noise=0.0) * 7
    radius, angle = roll.norm(dim=1), torch.atan2(roll[:, 1], roll[:, 0])
    assert float(radius.min()) >= 1.5 * math.pi - 1e-4 and float(radius.max()) <= 4.5 * math.pi + 1e-4
    torch.testing.assert_close(torch.cos(radius), torch.cos(angle), atol=1e-3, rtol=0)  # u cos u, u sin u
    wheel = sd.data.pinwheel(6000, g, arms=3)
    assert wheel.shape == (6000, 2)


def test_bad_toy_arguments():
    with pytest.raises(ValueError, match="name must be one of: ring, moons, swissroll, checkerboard, pinwheel, bimodal1d; got 'spiral'"):
        sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="n must be an integer >= 0; got -1"):
        sample_toy("moons", -1)
    with pytest.raises(ValueError, match="arms must be an integer >= 1; got 0"):
        sd.data.pinwheel(10, arms=0)
    with pytest.raises(ValueError, match="n must be an integer >= 0; got 2.5"):
        sd.data.checkerboard(2.5)


def test_digits_split_is_fixed_disjoint_and_complete():
    x, y = load_digits("train")
    xt, yt = load_digits("test")
    assert x.shape == (DIGITS_TRAIN_SIZE, 1, 8, 8) == (1500, 1, 8, 8) and xt.shape == (DIGITS_TEST_SIZE, 1, 8, 8) == (297, 1, 8, 8)
    assert y.shape == (1500,) and y.dtype == torch.long and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0 and float(xt.min()) >= -1 and float(xt.max()) <= 1
    assert set(y.tolist()) == set(yt.tolist()) == set(range(10))
    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(set(train.tolist()) | set(test.tolist())) == 1797
    # pinned: the split must never change between versions
    assert train[:5].tolist() == [573, 637, 785, 1691, 1167] and test[:5].tolist() == [749, 1040, 1290, 537, 1563]
    x2, y2 = load_digits("train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xa, ya = load_digits("all", dtype=torch.float64)
    assert xa.shape == (1797, 1, 8, 8) and xa.dtype == torch.float64
    assert torch.equal(xa[train].float(), x) and torch.equal(ya[test], yt)
    # grey levels 0..16 map to x / 8 - 1: 17 equally spaced values
    assert set((xa * 8 + 8).round().unique().tolist()) <= set(range(17))
    with pytest.raises(ValueError, match="split must be one of: train, test, all; got 'val'"):
        load_digits("val")
