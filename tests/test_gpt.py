"""The GPT blocks: nanoGPT's shape and size, causal, initialized as GPT-2 is; built block by block from
the settings as every model is."""
import math

import pytest
import torch

from dfa_async import config, gpt, model as models


def recipe(**over):
    """nanoGPT's shakespeare_char CPU model: 4 layers, 4 heads, 128 wide, context 64, vocabulary 65."""
    settings = dict(vocab=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False) | over
    return torch.nn.Sequential(*gpt.blocks(**settings))


def test_blocks_are_embeddings_with_the_first_layer_one_layer_each_then_the_head():
    net = recipe()
    assert len(net) == 5
    assert isinstance(net[0][0], gpt.Embedding) and isinstance(net[0][1], gpt.Layer)
    assert all(isinstance(b[0], gpt.Layer) and len(b) == 1 for b in net[1:4])
    assert isinstance(net[4][0], torch.nn.LayerNorm) and net[4][1].out_features == 65 and net[4][1].bias is None
    # closed form: a layer holds 12 d^2 weights and two LayerNorm gains; embeddings, final gain, decoder
    d, layers, vocab, context = 128, 4, 65, 64
    assert sum(p.numel() for p in net.parameters()) == 12 * d * d * layers + 2 * d * layers + 2 * vocab * d \
        + context * d + d  # 812,416: nanoGPT's "0.80M" ties the decoder to the token embedding and leaves out positions
    x = torch.randint(0, 65, (3, 64))
    assert models.output_shapes(net, (64,), torch.int64) == [(64, 128)] * 4 + [(64, 65)]
    assert net(x).shape == (3, 64, 65)


def test_a_position_sees_no_later_token():
    torch.manual_seed(0)
    net = recipe(n_layer=2, n_embd=32, n_head=2, block_size=16).eval()
    x = torch.randint(0, 65, (2, 16))
    later = x.clone()
    later[:, 9:] = torch.randint(0, 65, (2, 7))
    a, b = net(x), net(later)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_initialized_as_gpt2_from_the_blocks_own_seed_stream():
    cfg = config.load(None, ["model.kind=gpt", "data.name=tinyshakespeare", "model.n_layer=8", "model.n_embd=256",
                             "model.n_head=4", "model.block_size=64"])
    blocks = models.build_blocks(cfg, (64,), 65, [0, 3])
    layer = blocks[3][0]
    std = lambda t: t.detach().std().item()  # noqa: E731
    assert std(layer.fc.weight) == pytest.approx(0.02, rel=0.02)
    assert std(layer.proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.02)  # ends a residual branch
    assert std(layer.attn.proj.weight) == pytest.approx(0.02 / math.sqrt(16), rel=0.02)
    assert std(blocks[0][0].tokens.weight) == pytest.approx(0.02, rel=0.05)
    assert torch.equal(layer.ln1.weight, torch.ones(256))
    again = models.build_blocks(cfg, (64,), 65, [3])  # the same block, built alone, is the same block
    assert all(torch.equal(a, b) for a, b in zip(again[3].parameters(), blocks[3].parameters()))


def test_dropout_is_a_module_only_where_it_drops():
    """A block with a Dropout module is reseeded at every forward; with dropout 0 there is none."""
    quiet, noisy = recipe(n_layer=2, n_embd=32, n_head=2), recipe(n_layer=2, n_embd=32, n_head=2, dropout=0.1)
    has = lambda net: any(isinstance(m, torch.nn.Dropout) for m in net.modules())  # noqa: E731
    assert not has(quiet) and has(noisy) and noisy[0][1].attn.p == 0.1
