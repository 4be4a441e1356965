"""The `dfa-async` command."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
from pathlib import Path

from . import config as config_mod
from .config import ConfigError
from .data import DataError
from .run import Interrupted, StorageFull, TrainingStopped, train


def ints(flag: str, text: str) -> list[int]:
    """A comma-separated list of integers (its range is checked where it is used)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a comma-separated list of integers, e.g. 1,2,4") from None


MAX_WORKERS = 4096  # simulate: the engine's events grow with the workers times the steps


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (and says where the help is)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive(flag: str, value, lo=1) -> None:
    if value < lo:
        raise ValueError(f"{flag}: {value}; it must be >= {lo}")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside a run (a run reports its own step)
        print("dfa-async: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`dfa-async settings | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet
        return 141


def _main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="dfa-async", description="Train neural networks with Direct Feedback Alignment, layer-"
                    "parallel: each stage of blocks a Ray actor, updated as soon as the error arrives. "
                    "`dfa-async COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name: str, summary: str) -> Parser:  # the one line in the list is also the command's own help
        return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    tr = command("train", "train a model (with no config: an MLP on MNIST)")
    tr.add_argument("config", nargs="?", help="settings file (TOML); the built-in default when omitted")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one setting, e.g. --set optim.lr=0.01 (repeatable)")
    tr.add_argument("--run-dir", help="run directory, a path or an fsspec URI (default train.root/<name>); resumes from "
                    "its checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    doc = command("doctor", "before training on a new cluster: the plan (stages, nodes, GPUs, the "
                         "transport of each channel) and a ping through every channel of the data plane")
    doc.add_argument("config", nargs="?", help="settings file (TOML); the built-in default when omitted")
    doc.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one setting, as for train (repeatable)")
    command("settings", "list every setting with its default and meaning")
    rep = command("report", "tables and plots of a run, from its event log")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("--out", help="output folder (default RUN_DIR/report)")
    rep.add_argument("--against", nargs="+", default=[], metavar="OTHER_RUN",
                     help="other runs drawn beside this one on the validation-loss plot (e.g. the backprop baseline)")
    be = command("bench", "steps/s of backprop (single process, gpipe, 1f1b, ddp), reference DFA, the "
                        "data plane and the per-op Ray calls, side by side, over worker counts")
    be.add_argument("--model", default="mlp", choices=["mlp", "gpt"], help="tanh blocks (mlp), or a GPT (see "
                    "--n-layer); a gpt is one model split into the N stages")
    be.add_argument("--width", type=int, default=4096, help="width of each block (a square)")
    be.add_argument("--n-layer", type=int, default=3, help="with --model gpt: transformer layers (blocks: one more, "
                    "the head)")
    be.add_argument("--n-embd", type=int, default=128, help="with --model gpt: width")
    be.add_argument("--n-head", type=int, default=4, help="with --model gpt: attention heads")
    be.add_argument("--block-size", type=int, default=64, help="with --model gpt: context length in tokens")
    be.add_argument("--batch", type=int, default=256)
    be.add_argument("--stages", default="2", help="worker counts N, comma-separated (e.g. 1,2,4,8); one Ray "
                    "actor per stage")
    be.add_argument("--fixed-blocks", type=int, default=0, help="split one model of this many blocks into N "
                    "stages (default: a model of N blocks for each N)")
    be.add_argument("--microbatches", default="2,4", help="microbatches per minibatch for gpipe and 1f1b, "
                    "comma-separated (each is measured)")
    be.add_argument("--no-baselines", action="store_true", help="skip gpipe, 1f1b and ddp")
    be.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every worker computes")
    be.add_argument("--gpus-per-stage", type=float, default=1.0, help="with --device cuda: share of a GPU per "
                    "stage (0.5: two stages per GPU)")
    be.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    be.add_argument("--depths", default="1,2,3", help="pipeline depths D to measure, comma-separated")
    be.add_argument("--replicas", default="1", help="replica counts R, comma-separated: each N workers also as "
                    "N/R stages x R replicas (runtime.replicas), e.g. 1,2")
    be.add_argument("--repeats", type=int, default=2, help="rounds over every mode; each reports its best")
    be.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    be.add_argument("--warmup", type=int, default=5)
    be.add_argument("--transport", default="auto", choices=["auto", "shm", "gloo"])
    be.add_argument("--no-calls", action="store_true", help="skip the per-op Ray-call baseline")
    be.add_argument("--no-tiny", action="store_true",
                    help="skip the tiny-model runs that calibrate the simulator's cost per message")
    be.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    be.add_argument("--to-accuracy", type=float, metavar="ACC", help="instead: train the model of --config with "
                    "every mode until this test accuracy (e.g. 0.97); wall seconds and steps of each")
    be.add_argument("--to-loss", type=float, metavar="LOSS", help="instead: train the model of --config with every "
                    "mode until this test loss (a language model's validation loss per token, e.g. 2.0)")
    be.add_argument("--config", help="with --to-accuracy: settings file (default: the built-in MNIST MLP)")
    be.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="with --to-accuracy: override one setting (repeatable)")
    be.add_argument("--eval-every", type=int, default=0, help="with --to-accuracy: steps between evaluations "
                    "(default a quarter epoch)")
    sa = command("sample", "text from a character model a run trained (its final model or a checkpoint)")
    sa.add_argument("run_dir", metavar="RUN_DIR")
    sa.add_argument("--checkpoint", help="a file of RUN_DIR/checkpoints (default: the final model)")
    sa.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    sa.add_argument("--length", type=int, default=500, help="characters to generate")
    sa.add_argument("--temperature", type=float, default=0.8, help="below 1: surer, above 1: more varied")
    sa.add_argument("--top-k", type=int, default=200, help="draw only among the k likeliest characters")
    sa.add_argument("--seed", type=int, default=0, help="the same text for the same seed")
    si = command("simulate", "predicted samples/s of the DFA pipeline, gpipe, 1f1b and ddp for N "
                        "workers, from the profile a bench wrote")
    si.add_argument("bench_dir", metavar="BENCH_DIR", help="the --out folder of `dfa-async bench`")
    si.add_argument("--validate", action="store_true", help="instead: every mode the bench measured, measured "
                    "against predicted")
    si.add_argument("--link", default="measured", help="nvlink, pcie, ethernet-100g, or measured (this machine)")
    si.add_argument("--workers", default="1,2,4,8", help="worker counts N, comma-separated")
    si.add_argument("--depth", type=int, default=3, help="pipeline depth D of the DFA runtime")
    si.add_argument("--microbatches", type=int, default=4, help="microbatches of gpipe and 1f1b")
    si.add_argument("--replicas", default="1", help="replica counts R, comma-separated: also each N as N/R stages x "
                    "R replicas (e.g. 1,2,4)")
    si.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)

    if args.command == "simulate":
        from . import sim

        try:
            if args.validate:
                table = sim.validate(args.bench_dir)[1]
            else:
                positive("--depth", args.depth)
                positive("--microbatches", args.microbatches)
                workers = ints("--workers", args.workers)
                for w in workers:
                    positive("--workers", w)
                    if w > MAX_WORKERS:
                        raise ValueError(f"--workers: {w}; the simulator models at most {MAX_WORKERS} workers")
                replicas = ints("--replicas", args.replicas)
                for r in replicas:
                    positive("--replicas", r)
                table = sim.scaling(args.bench_dir, args.link, workers, args.depth, args.microbatches, replicas)
            if args.out:
                Path(args.out).write_text(table + "\n")
        except (ValueError, OSError) as err:
            print(f"dfa-async: error: {err}", file=sys.stderr)
            return 2
        print(table)
        return 0

    if args.command == "bench":
        from .perf import bench

        try:
            # Every argument is checked before any work, by bench.check or accuracy.run.
            depths, stages = ints("--depths", args.depths), ints("--stages", args.stages)
            replicas = ints("--replicas", args.replicas)
            microbatches = ints("--microbatches", args.microbatches)
            if args.to_accuracy is not None and args.to_loss is not None:
                raise ValueError("--to-accuracy and --to-loss: give one target")
            if args.to_accuracy is not None or args.to_loss is not None:
                from .perf import accuracy

                cfg = config_mod.load(args.config, args.set)
                loss = args.to_loss is not None
                accuracy.run(cfg, args.to_loss if loss else args.to_accuracy, depths, args.eval_every,
                             not args.no_baselines, microbatches[0], args.out, loss)
                return 0
            bench.run(args.width, args.batch, args.threads, stages, depths, args.warmup, args.steps,
                      args.out, args.transport, args.repeats, calls=not args.no_calls,
                      baselines=not args.no_baselines, microbatches=microbatches,
                      fixed_blocks=args.fixed_blocks or None, device=args.device,
                      gpus_per_stage=args.gpus_per_stage, tiny=not args.no_tiny,
                      gpt=dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                               block_size=args.block_size) if args.model == "gpt" else None, replicas=replicas)
        except (ValueError, ConfigError, DataError) as err:
            print(f"dfa-async: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"dfa-async: error: {err.filename or '--out'}: {err.strerror}", file=sys.stderr)
            return 2
        return 0

    if args.command == "report":
        from . import report

        try:
            print(report.write(args.run_dir, args.out, args.against))
        except (ValueError, ConfigError) as err:
            print(f"dfa-async: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"dfa-async: error: {err.filename or args.out or args.run_dir}: {err.strerror or err}",
                  file=sys.stderr)
            return 2
        return 0
    if args.command == "sample":
        from .sample import sample

        try:
            print(sample(Path(args.run_dir), args.prompt, args.length, args.temperature, args.top_k, args.seed,
                         args.checkpoint))
        except (ConfigError, DataError) as err:
            print(f"dfa-async: error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "settings":
        print(config_mod.describe())
        return 0
    if args.command == "doctor":
        from .runtime.doctor import Unreachable, doctor

        try:
            doctor(config_mod.load(args.config, args.set))
        except (ConfigError, DataError) as err:
            print(f"dfa-async: error: {err}", file=sys.stderr)
            return 2
        except Unreachable as err:
            print(f"dfa-async doctor: {err}", file=sys.stderr)
            return 1
        return 0
    try:
        cfg = config_mod.load(args.config, args.set)
        for setting, target in (("--run-dir", args.run_dir), ("train.root", cfg.train.root)):
            if target is not None and str(target).startswith("memory://"):
                raise ConfigError(f"{setting}: {target!r} lives in this process only and would be gone when the "
                                  "command ends; give a path or a persistent URI (memory:// is for the Python API)")

        metrics = None
        if cfg.metrics.enabled or cfg.metrics.port:
            from .metrics import Exporter

            try:
                metrics = Exporter(cfg.metrics.port, cfg.metrics.host)
            except OSError as err:
                if err.errno == errno.EADDRINUSE or isinstance(err, PermissionError):
                    raise ConfigError(f"metrics.port: cannot serve on {cfg.metrics.host}:{cfg.metrics.port} "
                                      f"({err.strerror}); choose another port, or 0 for any free one") from None
                raise ConfigError(f"metrics.host: {cfg.metrics.host!r} is not an address of this machine "
                                  f"({err.strerror or err}); give one, e.g. 127.0.0.1 (or 0.0.0.0 for every "
                                  "interface)") from None
            print(f"dfa-async: metrics on http://{cfg.metrics.host}:{metrics.port}/metrics", flush=True)
        if threading.current_thread() is threading.main_thread():
            # SIGTERM stops a run as Ctrl-C does, naming what was kept (Ray's driver handler does the same).
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        try:
            result = train(cfg, args.run_dir, progress=not args.no_progress, metrics=metrics)
        finally:
            if metrics:
                metrics.close()
    except (ConfigError, DataError) as err:
        print(f"dfa-async: error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, TrainingStopped, StorageFull) as err:
        print(f"dfa-async: error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"dfa-async: {err}", file=sys.stderr)
        return 128 + err.signum
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
