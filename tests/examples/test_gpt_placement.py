"""examples/gpt_placement.py: the micro placement regroups the built-in GPT's modules, so the untrained
network is the same function; each placement trains through the Python API."""
import sys
from pathlib import Path

import torch

from dfa_async import config, model as models

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import gpt_placement  # noqa: E402


def tiny(text: Path) -> list[str]:
    return ["model.kind=gpt", "data.name=text", f"data.path={text}", "data.eval_windows=12", "model.n_layer=2",
            "model.n_head=2", "model.n_embd=16", "model.block_size=8", "model.dropout=0.1", "train.batch_size=4",
            "train.epochs=0", "train.max_steps=4", "runtime.backend=local", "feedback.error_at=hidden",
            "feedback.init=wishart"]


def test_micro_splits_every_layer_at_its_sublayers_and_computes_the_same_function(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 20)
    cfg = config.load(None, tiny(text))
    net = models.build(cfg, (8,), 20).eval()
    split = gpt_placement.micro(net)
    assert len(split) == 2 * 2 + 1  # attention and MLP of each layer, then the head
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in net.parameters())
    x = torch.randint(0, 20, (3, 8))
    torch.testing.assert_close(split(x), net(x), rtol=0, atol=0)


def test_each_placement_trains(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 20)
    sets = [a for s in tiny(text) for a in ("--set", s)]
    losses = {p: gpt_placement.main(["--placement", p, *sets, "--run-dir", str(tmp_path / p)])
              for p in ("macro", "micro")}
    out = capsys.readouterr().out
    assert "macro: 3 blocks" in out and "micro: 5 blocks" in out
    assert all(0 < v < 10 for v in losses.values()) and losses["macro"] != losses["micro"]
