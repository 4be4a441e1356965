"""`dfa-async sample`: text from a trained character model, the same for a seed; bad input in one line."""
import pytest
import torch

from dfa_async import cli, config, sample, train


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    text = folder / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 60)
    cfg = config.load(None, ["model.kind=gpt", "data.name=text", f"data.path={text}", "data.eval_windows=20",
                             "model.n_layer=2", "model.n_head=2", "model.n_embd=16", "model.block_size=8",
                             "train.batch_size=8", "train.epochs=0", "train.max_steps=30", "checkpoint.every=10",
                             "runtime.backend=local", "optim.lr=0.01"])
    train(cfg, folder / "run")
    return folder / "run"


def test_sampling_is_the_same_for_a_seed_and_continues_the_prompt(char_run, capsys):
    assert cli.main(["sample", str(char_run), "--prompt", "to be", "--length", "40", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["sample", str(char_run), "--prompt", "to be", "--length", "40", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("to be") and len(first.rstrip("\n")) == 45
    assert set(first.rstrip("\n")) <= set("to be or not to be, that is the question. ")
    other = sample.sample(char_run, "to be", 40, seed=4)
    assert other != first.rstrip("\n")  # another seed, another draw


def test_a_checkpoint_samples_with_its_own_weights(char_run):
    net, vocab, window = sample.load_model(char_run, "step-00000019.pt")
    final, _, _ = sample.load_model(char_run)
    assert window == 8 and len(vocab) == len(set("to be or not to be, that is the question. "))
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), final.parameters()))
    greedy = sample.generate(final, [vocab.index("t")], 12, window, temperature=1e-4, top_k=1)
    assert greedy == sample.generate(final, [vocab.index("t")], 12, window, temperature=1e-4, top_k=1, seed=9)


@pytest.mark.parametrize("args,words", [
    (["--prompt", "XYZ"], "--prompt: 'XYZ' not in the run's"),
    (["--temperature", "0"], "--temperature: 0.0; it must be > 0"),
    (["--length", "0"], "--length: 0"),
    (["--checkpoint", "step-9.pt"], "--checkpoint: 'step-9.pt' is not in"),
])
def test_bad_sampling_input_is_one_line(char_run, capsys, args, words):
    assert cli.main(["sample", str(char_run), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_a_run_of_an_image_model_is_refused_in_one_line(tmp_path, capsys):
    from conftest import small_config

    train(small_config(), tmp_path / "mlp")
    assert cli.main(["sample", str(tmp_path / "mlp")]) == 2
    assert "sample reads runs of a gpt on a text" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "none")]) == 2
    assert "holds no run" in capsys.readouterr().err
