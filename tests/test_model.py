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


def test_the_papers_block_order():
    """best_practices.py of the paper's code: FC Linear -> Dropout -> act -> BatchNorm; conv Conv ->
    Dropout2d -> act -> BatchNorm -> MaxPool, input dropout channel-wise; the head a plain Linear."""
    names = lambda block: [type(m).__name__ for m in block]  # noqa: E731
    fc = models.mlp_blocks(3072, [800, 800], 10, "tanh", batchnorm=True, dropout_input=0.1, dropout_hidden=0.5,
                           order="paper")
    assert names(fc[0]) == ["Flatten", "Dropout", "Linear", "Dropout", "Tanh", "BatchNorm1d"]
    assert names(fc[1]) == ["Linear", "Dropout", "Tanh", "BatchNorm1d"] and names(fc[2]) == ["Linear"]
    assert fc[1][1].p == 0.5 and fc[0][1].p == 0.1
    std = models.mlp_blocks(3072, [800], 10, "tanh", batchnorm=True, dropout_hidden=0.5)
    assert names(std[0]) == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Dropout"]
    cnn = models.cnn_blocks((3, 32, 32), [32, 64, 64], [128], 10, "relu", batchnorm=True, dropout_input=0.1,
                            dropout_hidden=0.1, order="paper")
    assert names(cnn[0]) == ["Dropout2d", "Conv2d", "Dropout2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert names(cnn[1]) == ["Conv2d", "Dropout2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert names(cnn[3]) == ["Flatten", "Linear", "Dropout", "ReLU", "BatchNorm1d"]
    assert cnn[3][1].in_features == 576  # the paper's lin1: Linear(576, 128)
    cfg = config.from_dict({"model": {"block_order": "paper", "batchnorm": True, "widths": [16]}})
    assert names(models.build(cfg, (1, 8, 8), 10)[0]) == ["Flatten", "Linear", "Tanh", "BatchNorm1d"]
