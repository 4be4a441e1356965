"""Model builders: the paper's networks, block boundaries and seeded initialization."""
import torch
from torch import nn

from dfa_async import config, model as models


def test_paper_fc_network_shapes():
    cfg = config.load(None, ["model.widths=[800, 800, 800]", "model.batchnorm=true", "model.dropout_input=0.1",
                             "model.dropout_hidden=0.2", "model.activation=leaky_relu", "model.leaky_slope=0.2"])
    net = models.build(cfg, (3, 32, 32), 10)
    assert len(net) == 4
    assert net[0][2].in_features == 3072 and net[-1][0].out_features == 10
    assert isinstance(net[0][1], nn.Dropout) and net[0][1].p == 0.1
    assert isinstance(net[1][1], nn.BatchNorm1d) and net[1][2].negative_slope == 0.2
    assert models.output_shapes(net, (3, 32, 32)) == [(800,), (800,), (800,), (10,)]


def test_paper_cnn_shapes():
    cfg = config.load(None, ["model.kind=cnn", "model.widths=[128]", "model.batchnorm=true"])
    net = models.build(cfg, (3, 32, 32), 10)
    assert models.output_shapes(net, (3, 32, 32)) == [(32, 15, 15), (64, 7, 7), (64, 3, 3), (128,), (10,)]
    conv = net[0][0]
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2)
    assert isinstance(net[0][2], nn.BatchNorm2d) and isinstance(net[0][3], nn.MaxPool2d)


def test_each_block_initialized_from_its_own_seed():
    a = models.build(config.load(None, ["model.widths=[20, 30]"]), (1, 4, 4), 10)
    b = models.build(config.load(None, ["model.widths=[20, 40]"]), (1, 4, 4), 10)
    # Block 0 does not depend on what comes after it.
    assert torch.equal(a[0][1].weight, b[0][1].weight)
    bound = 1 / 16 ** 0.5
    assert a[0][1].weight.abs().max() <= bound


def test_activations():
    for name, cls in (("tanh", nn.Tanh), ("relu", nn.ReLU), ("sigmoid", nn.Sigmoid), ("leaky_relu", nn.LeakyReLU)):
        assert isinstance(models.activation(name), cls)
