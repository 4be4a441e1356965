"""`dfa-async report`: tables and plots from the event log alone."""
import pytest

from dfa_async import report, runlog, train

from conftest import small_config


def test_report_from_a_run(tmp_path):
    res = train(small_config(train={"epochs": 2}, alignment={"every": 8, "probe_size": 16}), tmp_path / "r")
    md_path = report.write(tmp_path / "r")
    md = md_path.read_text()
    assert f"| {res.steps} | {res.test_accuracy:.4f} |" in md
    aligns = runlog.read(tmp_path / "r" / "events.msgpack", "align")
    first = aligns[0]["blocks"][0]
    assert f"| {aligns[0]['step']} | {first['cos_mean']:.3f} ± {first['cos_std']:.3f} |" in md
    for name in ("loss.png", "test_error.png", "alignment.png"):
        data = (md_path.parent / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({name})" in md


def test_every_plot_fits_its_figure_and_names_its_lines(tmp_path):
    """Nothing clipped (the staleness label once ran off its figure), a legend on both alignment panels,
    blocks numbered from 0 as in the log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = small_config(runtime={"depth": 3, "blocks_per_stage": [1, 2]},
                       alignment={"every": 8, "probe_size": 16})
    train(cfg, tmp_path / "r")
    figs = report.figures(report.load(tmp_path / "r"), plt)
    try:
        assert set(figs) == {"loss.png", "test_error.png", "alignment.png", "timeline.png", "staleness.png"}
        for name, fig in figs.items():
            assert not report.clipped(fig), name
        panels = figs["alignment.png"].axes
        for ax in panels:
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["block 0", "block 1", "block 2"]
        assert "cosine" in panels[0].get_title() and "angle" in panels[1].get_title()
        # the check itself: a label longer than its figure is caught
        wide, ax = plt.subplots(figsize=(2, 2))
        ax.set_xlabel("a label far longer than a two-inch figure can hold")
        wide.tight_layout()
        assert report.clipped(wide)
    finally:
        plt.close("all")


def test_report_of_an_unfinished_run_and_of_a_missing_dir(tmp_path):
    train(small_config(), tmp_path / "r")
    log = tmp_path / "r" / "events.msgpack"
    recs = runlog.read(log)
    import msgpack
    raw = log.read_bytes()
    log.write_bytes(raw[:len(raw) - 12 - len(msgpack.packb(recs[-1])) - 3])  # cut inside the record before `done`
    md = report.write(tmp_path / "r").read_text()
    assert "has not finished" in md
    with pytest.raises(ValueError, match="RUN_DIR"):
        report.write(tmp_path / "nothing")


def test_timeline_chart_and_staleness_histogram(tmp_path):
    """A 2-stage pipeline of depth 3: the histogram holds every update's staleness as the schedule says,
    and the Gantt chart's bars are the logged ops of the last window, in time order per stage."""
    from dfa_async import schedule

    cfg = small_config(runtime={"depth": 3, "blocks_per_stage": [1, 2]}, train={"epochs": 2})
    res = train(cfg, tmp_path / "r")
    md = report.write(tmp_path / "r").read_text()
    assert "(timeline.png)" in md and "(staleness.png)" in md
    recs = runlog.read(tmp_path / "r" / "events.msgpack", "timeline")
    want: dict[int, int] = {}
    marks = schedule.boundaries(res.steps, res.steps // 2, cfg.checkpoint.every)
    for k in schedule.staleness(schedule.ops(0, res.steps, 3, marks)).values():
        want[k] = want.get(k, 0) + 2  # two stages
    assert report.staleness_counts(recs) == dict(sorted(want.items()))
    first, bars = report.gantt(recs)
    assert list(bars) == ["0", "1"]
    last = max(r["step"] for r in recs)
    assert first == min(min(r["steps"]) for r in recs if r["step"] == last)
    for ops in bars.values():
        fwd = ops["forward"]
        assert 0 < len(fwd) <= report.GANTT_STEPS and len(ops["update"]) > 0
        assert all(a >= 0 and d >= 0 for a, d in fwd) and [a for a, _ in fwd] == sorted(a for a, _ in fwd)


def test_report_of_a_damaged_log_warns_and_reports_the_rest(tmp_path, capsys):
    train(small_config(), tmp_path / "r")
    log = tmp_path / "r" / "events.msgpack"
    raw = bytearray(log.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    log.write_bytes(bytes(raw))
    md = report.write(tmp_path / "r").read_text()
    err = capsys.readouterr().err
    assert "warning:" in err and "damaged bytes at offset" in err
    assert "# Run report" in md and "has not finished" not in md  # the `done` record after the damage is kept


def test_a_language_models_report_plots_validation_loss_against_steps_and_time_beside_other_runs(tmp_path):
    from dfa_async import config

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 60)
    common = ["model.kind=gpt", "data.name=text", f"data.path={text}", "data.eval_windows=20", "model.n_layer=2",
              "model.n_head=2", "model.n_embd=16", "model.block_size=8", "train.batch_size=8", "train.epochs=0",
              "train.max_steps=20", "train.eval_every=5", "runtime.backend=local"]
    dfa = train(config.load(None, common), tmp_path / "dfa")
    train(config.load(None, common + ["feedback.rule=bp"]), tmp_path / "bp")
    md = report.write(tmp_path / "dfa", against=[tmp_path / "bp"]).read_text()
    assert "validation loss (nats/token)" in md and f"| 20 | {dfa.test_loss:.4f} |" in md
    assert "## Validation" in md and "(val_loss.png)" in md and "test_error.png" not in md
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = report.load(tmp_path / "dfa")
    figs = report.figures(ev, plt, {"bp": report.load(tmp_path / "bp")})
    try:
        steps_ax, time_ax = figs["val_loss.png"].axes
        assert [t.get_text() for t in steps_ax.get_legend().get_texts()] == ["dfa (local, D=1)", "bp"]
        assert [len(line.get_xdata()) for line in time_ax.get_lines()] == [4, 4]  # steps 5, 10, 15, 20
        assert not report.clipped(figs["val_loss.png"])
    finally:
        plt.close("all")
