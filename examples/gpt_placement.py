"""Where a GPT's feedback points sit (docs/transformers.md, "What was tried"): `macro` is the built-in
placement, one per transformer layer; `micro` (Launay et al. 2020) one after each attention and each MLP
sublayer, so every sublayer is a block of its own and learns from its own B e. Same weights at the start,
same data and settings; only the blocks differ. Through the Python API (a user's nn.Sequential), on the
config you give, with `--set` overrides; prints the validation loss.

    python examples/gpt_placement.py --placement micro --config examples/configs/shakespeare_char.toml \
        --set runtime.backend=local --set runtime.depth=1 --set train.max_steps=600 --set train.eval_every=0
"""
from __future__ import annotations

import argparse
import tempfile

import torch.nn.functional as F
from torch import nn

from dfa_async import config, data, model as models, train


class Attention(nn.Module):
    """x + attention(LN(x)): the first half of a gpt.Layer, sharing its modules."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.ln1, self.attn = layer.ln1, layer.attn

    def forward(self, x):
        return x + self.attn(self.ln1(x))


class MLP(nn.Module):
    """x + MLP(LN(x)): the second half."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.ln2, self.fc, self.proj, self.drop = layer.ln2, layer.fc, layer.proj, layer.drop

    def forward(self, x):
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


def micro(net: nn.Sequential) -> nn.Sequential:
    """The built-in blocks ([embeddings, layer 0], [layer 1], ..., head) split at every sublayer."""
    blocks = []
    for k, block in enumerate(net[:-1]):
        layer = block[-1]
        blocks.append(nn.Sequential(*block[:-1], Attention(layer)) if k == 0 else nn.Sequential(Attention(layer)))
        blocks.append(nn.Sequential(MLP(layer)))
    return nn.Sequential(*blocks, net[-1])


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--placement", choices=("macro", "micro"), default="micro")
    parser.add_argument("--config", help="a gpt config, e.g. examples/configs/shakespeare_char.toml (default: the "
                        "built-in settings, made a gpt with --set)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--run-dir", help="where the run is written (default: a temporary directory)")
    args = parser.parse_args(argv)
    # The stage split is the config's for the built-in blocks; micro has twice the layers' blocks.
    cfg = config.load(args.config, ["runtime.blocks_per_stage=[]", *args.set])
    if cfg.model.kind != "gpt":
        parser.error(f"--config: model.kind is {cfg.model.kind!r}; this compares placements of a gpt")
    ds = data.for_run(cfg)
    net = models.build(cfg, ds.shape, ds.classes)
    if args.placement == "micro":
        net = micro(net)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, args.run_dir or tmp, model=net)
    print(f"{args.placement}: {len(net)} blocks, validation loss {result.test_loss:.4f} nats per token")
    return result.test_loss


if __name__ == "__main__":
    main()
