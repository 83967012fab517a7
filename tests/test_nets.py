import math

import pytest
import torch

import scoresde as sd
from scoresde.nets import MLP, UNet, build_net
from scoresde.nets.embeddings import GaussianFourierEmbedding, SinusoidalEmbedding


def count(net):
    return sum(p.numel() for p in net.parameters())


def randomize_output_layer(net):
    """The output layer (and the UNet's residual branches) start at zero, as after
    initialization; give them weights so that the output depends on every input."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(std=0.1)
    return net


def test_default_parameter_counts_match_the_docstrings():
    assert count(MLP(2)) == 924_930
    assert count(MLP(2, hidden=128, depth=3)) == 183_298
    assert count(UNet()) == 634_273
    assert count(UNet(num_classes=10)) == 635_681
    assert count(UNet(3)) == 635_427


@pytest.mark.parametrize("dim", [1, 2, 16])
@pytest.mark.parametrize("time_embedding", ["fourier", "sinusoidal"])
def test_mlp_shapes_zero_start_and_time_dependence(dim, time_embedding):
    torch.manual_seed(0)
    net = MLP(dim, hidden=32, depth=2, time_embedding=time_embedding)
    x = torch.randn(5, dim)
    out = net(x, torch.rand(5))
    assert out.shape == (5, dim) and torch.equal(out, torch.zeros_like(out))
    randomize_output_layer(net)
    a, b = net(x, torch.full((5,), 0.1)), net(x, torch.full((5,), 0.9))
    assert a.shape == (5, dim) and (a - b).abs().max() > 1e-3
    torch.testing.assert_close(net(x, torch.tensor(0.1)), a)  # scalar time broadcasts


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (3, 1, 16, 16), (2, 3, 8, 8), (2, 3, 16, 16), (2, 1, 8, 12)])
def test_unet_output_shape_equals_input_shape(shape):
    torch.manual_seed(0)
    net = randomize_output_layer(UNet(in_channels=shape[1], base_channels=8, groups=4))
    out = net(torch.randn(shape), torch.rand(shape[0]))
    assert out.shape == shape and out.abs().max() > 0


def test_unet_three_levels_on_16x16():
    net = UNet(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, groups=4, time_embedding="sinusoidal")
    assert net(torch.randn(2, 1, 16, 16), torch.rand(2)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"H and W must be divisible by 2\^\(len\(channel_mults\) - 1\) = 4; got \(10, 10\)"):
        net(torch.randn(2, 1, 10, 10), torch.rand(2))


@pytest.mark.parametrize("make", [lambda: MLP(2, hidden=32, depth=1, num_classes=4),
                                  lambda: UNet(base_channels=8, groups=4, num_classes=4)])
def test_class_conditioning_and_the_null_label(make):
    torch.manual_seed(0)
    net = randomize_output_layer(make())
    x = torch.randn(3, 2) if isinstance(net, MLP) else torch.randn(3, 1, 8, 8)
    t = torch.rand(3)
    null = net(x, t)
    torch.testing.assert_close(net(x, t, y=torch.full((3,), 4)), null)  # y=None means label num_classes
    labelled = net(x, t, y=torch.tensor([0, 1, 3]))
    assert (labelled - null).abs().amax(dim=tuple(range(1, x.ndim))).min() > 1e-4
    assert not torch.allclose(net(x, t, y=torch.tensor([0, 0, 0])), net(x, t, y=torch.tensor([1, 1, 1])))
    with pytest.raises(ValueError, match=r"y must be labels in \[0, num_classes=4\] .*; got 'values in \[0, 5\]'"):
        net(x, t, y=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match=r"y must be an integer tensor of shape \(B,\) = \(3,\)"):
        net(x, t, y=torch.zeros(3))


def test_continuous_condition_of_the_mlp():
    torch.manual_seed(0)
    net = randomize_output_layer(MLP(2, hidden=16, depth=1, cond_dim=3))
    x, t = torch.randn(4, 2), torch.rand(4)
    assert not torch.allclose(net(x, t, cond=torch.randn(4, 3)), net(x, t))
    with pytest.raises(ValueError, match=r"cond must have shape \(B, cond_dim\) = \(4, 3\)"):
        net(x, t, cond=torch.randn(4, 2))


def test_vector_condition_of_the_unet_beside_labels():
    """cond (B, cond_dim) shifts the time embedding through a bias-free projection: None is
    exactly the zero vector, each row's condition changes only its own output, labels and
    a vector combine, and cond_dim adds cond_dim * 4 base_channels parameters."""
    assert count(UNet(cond_dim=7)) == count(UNet()) + 7 * 4 * 32
    assert "cond_dim" not in UNet().config  # configs of unconditioned U-Nets are as before
    torch.manual_seed(0)
    net = randomize_output_layer(UNet(base_channels=8, groups=4, num_classes=3, cond_dim=5))
    x, t, cond = torch.randn(3, 1, 8, 8), torch.rand(3), torch.randn(3, 5)
    with torch.no_grad():
        out = net(x, t, cond=cond)
        assert out.shape == x.shape
        torch.testing.assert_close(net(x, t, cond=torch.zeros(3, 5)), net(x, t), rtol=0, atol=0)
        assert (out - net(x, t)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        changed = cond.clone()
        changed[1] += 1.0
        other = net(x, t, cond=changed)
        torch.testing.assert_close(other[[0, 2]], out[[0, 2]], rtol=0, atol=0)
        assert (other[1] - out[1]).abs().max() > 1e-4
        y = torch.tensor([0, 1, 2])
        both = net(x, t, y=y, cond=cond)
        assert not torch.allclose(both, net(x, t, y=y)) and not torch.allclose(both, out)
        torch.testing.assert_close(net(x, t, y=y, cond=torch.zeros(3, 5)), net(x, t, y=y), rtol=0, atol=0)
    rebuilt = build_net("UNet", net.config)
    assert rebuilt.config == net.config and count(rebuilt) == count(net)


@pytest.mark.parametrize(
    "cond, match",
    [
        (torch.randn(3, 4), r"cond must be a real floating-point tensor \(B, cond_dim\) = \(3, 5\); got \(3, 4\)"),
        (torch.randn(2, 5), r"cond must be a real floating-point tensor \(B, cond_dim\) = \(3, 5\); got \(2, 5\)"),
        (torch.randn(3), r"cond must be a real floating-point tensor \(B, cond_dim\) = \(3, 5\); got 'a torch.float32 tensor of shape \(3,\)'"),
        (torch.zeros(3, 5, dtype=torch.long), r"cond must be a real floating-point tensor .*; got 'a torch.int64 tensor"),
    ],
)
def test_bad_unet_conditions(cond, match):
    net = UNet(base_channels=8, groups=4, cond_dim=5)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    with pytest.raises(ValueError, match=match):
        net(x, t, cond=cond)


def test_a_condition_for_a_unet_without_cond_dim_is_refused():
    with pytest.raises(ValueError, match=r"cond must be None \(the UNet was built without cond_dim\); got 'Tensor'"):
        UNet(base_channels=8, groups=4)(torch.randn(2, 1, 8, 8), torch.rand(2), cond=torch.randn(2, 3))


def test_networks_plug_into_score_model_with_conditioning():
    torch.manual_seed(0)
    net = randomize_output_layer(UNet(base_channels=8, groups=4, num_classes=10))
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="v")
    x = torch.randn(2, 1, 8, 8)
    assert model.score(x, 0.5, y=torch.tensor([1, 2])).shape == x.shape
    edm = sd.ScoreModel(MLP(2, hidden=16, depth=1), sd.EDMSDE(), prediction="edm")
    assert edm.x0(torch.randn(3, 2), torch.full((3,), 5.0)).shape == (3, 2)


def test_config_rebuilds_the_same_network():
    for net in (MLP(3, hidden=24, depth=2, num_classes=2), UNet(2, base_channels=8, channel_mults=(1, 2, 4), groups=4)):
        clone = build_net(type(net).__name__, net.config)
        clone.load_state_dict(net.state_dict())
        assert clone.config == net.config and count(clone) == count(net)
    with pytest.raises(ValueError, match="name must be one of: MLP, UNet; got 'ResNet'"):
        build_net("ResNet", {})


def test_float64_networks():
    net = MLP(2, hidden=16, depth=1).double()
    assert net(torch.randn(3, 2, dtype=torch.float64), torch.rand(3, dtype=torch.float64)).dtype == torch.float64


def test_time_embeddings():
    t = torch.tensor([0.0, 0.3, 1.0])
    fourier = GaussianFourierEmbedding(16, scale=4.0)
    emb = fourier(t)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.full((3,), math.sqrt(8.0)))  # sin^2 + cos^2 = 1 per pair
    assert "freqs" in fourier.state_dict()  # random, so it must travel with the weights
    sinus = SinusoidalEmbedding(8)
    torch.testing.assert_close(sinus(t)[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(sinus(t)[1, 0], torch.sin(torch.tensor(300.0)))  # time_scale 1000, frequency 1
    assert "freqs" not in sinus.state_dict()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MLP(0), "dim must be an integer >= 1; got 0"),
        (lambda: MLP(2, hidden=15), "hidden must be even .*; got 15"),
        (lambda: MLP(2, time_embedding="learned"), "time_embedding must be one of: fourier, sinusoidal; got 'learned'"),
        (lambda: MLP(2, num_classes=0), "num_classes must be an integer >= 1; got 0"),
        (lambda: UNet(base_channels=12, groups=8), r"groups must be a divisor of every level width \[12, 24\] .*; got 8"),
        (lambda: UNet(channel_mults=()), r"channel_mults must be a non-empty sequence of integers >= 1; got \[\]"),
        (lambda: UNet(dropout=1.0), r"dropout must be a finite number in \[0, 1\); got 1.0"),
        (lambda: MLP(2, depth=True), "depth must be an integer >= 1; got True"),
        (lambda: MLP(2, cond_dim=1.5), "cond_dim must be an integer >= 1; got 1.5"),
        (lambda: UNet(cond_dim=0), "cond_dim must be an integer >= 1; got 0"),
        (lambda: UNet(cond_dim=2**25), "cond_dim must be at most 1.67772e\\+07; got 33554432"),
        (lambda: UNet(channel_mults=(1, 0)), r"channel_mults\[1\] must be an integer >= 1; got 0"),
        (lambda: GaussianFourierEmbedding(7), "dim must be an even integer >= 2; got 7"),
        (lambda: SinusoidalEmbedding(8, max_period=1.0), "max_period must be a finite number > 1; got 1.0"),
    ],
)
def test_bad_network_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_network_inputs():
    mlp, unet = MLP(2, hidden=16, depth=1), UNet(base_channels=8, groups=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, dim\) = \(B, 2\); got \(4, 3\)"):
        mlp(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\) with C = 1; got \(2, 3, 8, 8\)"):
        unet(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="y was given but the MLP was built without num_classes"):
        mlp(torch.randn(4, 2), torch.rand(4), y=torch.zeros(4, dtype=torch.long))
