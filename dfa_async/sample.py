"""`dfa-async sample`: text from a character model a run trained (its final model, or a checkpoint), as
nanoGPT's sample.py does: the prompt, then one token at a time from the softmax of the last position's
logits at a temperature, kept to the top k, drawn from a seeded generator (the same text for a seed)."""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, config as config_mod, data, runlog
from .config import ConfigError
from .stage import Plan


def load_model(run_dir: Path, which: str | None = None) -> tuple[torch.nn.Sequential, str, int]:
    """The run's model (its final weights, or checkpoint `which` of checkpoints/), its vocabulary and
    context length."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file() or not (run_dir / "events.msgpack").is_file():
        raise ConfigError(f"RUN_DIR: {run_dir} holds no run (config.toml and events.msgpack); give a run directory")
    cfg = config_mod.load(run_dir / "config.toml")
    if cfg.model.kind != "gpt":
        raise ConfigError(f"RUN_DIR: {run_dir} trained model.kind = {cfg.model.kind!r} on {cfg.data.name!r}; sample "
                          "reads runs of a gpt on a text")
    window = cfg.model.block_size
    # the run's characters, from its log (else from its text, as the run read it)
    vocab = next((r["vocab"] for r in runlog.read(run_dir / "events.msgpack", "config") if "vocab" in r), None) \
        or data.load(cfg.data, window=window).vocab
    net = Plan(cfg, (window,), len(vocab), 1, 1, window=window).build()
    if which is None:
        path = run_dir / "final_model.pt"
        if not path.is_file():
            raise ConfigError(f"RUN_DIR: {run_dir} has no final_model.pt yet (the run has not finished); name one of "
                              "its checkpoints with --checkpoint")
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        path = run_dir / "checkpoints" / which
        if not path.is_file():
            have = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
            raise ConfigError(f"--checkpoint: {which!r} is not in {run_dir / 'checkpoints'}; it holds "
                              f"{', '.join(have) or 'none'}")
        blocks = checkpoint.load(path)["blocks"]
        for k, block in enumerate(net):
            block.load_state_dict(blocks[str(k)]["block"])
    return net.eval(), vocab, window


@torch.no_grad()
def generate(net: torch.nn.Sequential, ids: list[int], length: int, window: int, temperature: float = 0.8,
             top_k: int = 200, seed: int = 0) -> list[int]:
    """`length` tokens after `ids`, each from the last position's logits over at most `window` tokens."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids])
    for _ in range(length):
        logits = net(idx[:, -window:])[:, -1, :] / temperature
        if top_k < logits.shape[-1]:
            floor = torch.topk(logits, top_k).values[:, -1:]
            logits = logits.masked_fill(logits < floor, float("-inf"))
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
        idx = torch.cat([idx, nxt], dim=1)
    return idx[0, len(ids):].tolist()


def sample(run_dir: Path, prompt: str = "\n", length: int = 500, temperature: float = 0.8, top_k: int = 200,
           seed: int = 0, which: str | None = None) -> str:
    """The prompt and `length` characters sampled after it."""
    for flag, value in (("--length", length), ("--top-k", top_k)):
        if value < 1:
            raise ConfigError(f"{flag}: {value}; it must be >= 1")
    if not 0 < temperature < float("inf"):
        raise ConfigError(f"--temperature: {temperature}; it must be > 0 (e.g. 0.8)")
    if not prompt:
        raise ConfigError("--prompt: empty; give at least one character (the default is a newline)")
    net, vocab, window = load_model(run_dir, which)
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(prompt) - set(index))
    if unknown:
        raise ConfigError(f"--prompt: {''.join(unknown)!r} not in the run's {len(vocab)} characters; use only those")
    out = generate(net, [index[c] for c in prompt], length, window, temperature, top_k, seed)
    return prompt + "".join(vocab[i] for i in out)
