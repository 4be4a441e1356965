"""The window driver: windows end at cuts and size themselves; the driver queues one window behind the
running one, serves every cut on a drained pipeline, and idle time is read from the op timestamps."""
from dfa_async import data, windows
from dfa_async.reference import LocalPipeline
from dfa_async.stage import Plan, Window
from dfa_async.windows import WINDOW_S, Windows

from conftest import small_config


def test_windows_end_at_cuts_and_size_themselves_to_about_a_second_of_work():
    fixed = Windows(0, 20, cuts=[4], fixed=6)
    assert list(fixed) == [(0, 5), (5, 11), (11, 17), (17, 20)]
    auto = Windows(0, 10_000, cuts=[99])
    it = iter(auto)
    assert next(it) == (0, 8)  # a short first window, to measure
    # 8 steps took 0.02 s on the slowest-spanning stage: 400 steps/s.
    auto.measured(Window(0, 8, [0.0] * 8, [[("forward", 0, 10.0, 10.01, 0), ("update", 7, 10.015, 10.02, 0)],
                                           [("forward", 0, 10.005, 10.01, 0)]]))
    assert next(it) == (8, 100)  # capped by the cut after step 99
    assert next(it) == (100, 100 + int(400 * WINDOW_S))


class Recording:
    """The reference pipeline, recording the driver's calls."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def submit(self, a, b):
        self.calls.append(("submit", a, b))
        return self.pipe.submit(a, b)

    def collect(self, handle):
        win = self.pipe.collect(handle)
        self.calls.append(("collect", win.start, win.stop))
        return win


def test_drive_queues_the_next_window_and_serves_each_cut_drained():
    cfg = small_config()
    ds = data.load(cfg.data, cfg.train.seed)
    plan = Plan(cfg, ds.shape, ds.classes, 12, 16)
    pipe = Recording(LocalPipeline(plan, None, ds))
    seen, cuts = [], []

    def at_cut(t):
        assert pipe.calls[-1] == ("collect", 4, t + 1)  # drained: the window ending at t is collected, no later one submitted
        cuts.append(t)

    windows.drive(pipe, 0, 12, cuts=[5], fixed=4, on_window=lambda w: seen.append((w.start, w.stop)), at_cut=at_cut)
    assert seen == [(0, 4), (4, 6), (6, 10), (10, 12)] and cuts == [5]
    assert pipe.calls == [("submit", 0, 4), ("submit", 4, 6), ("collect", 0, 4), ("collect", 4, 6),
                          ("submit", 6, 10), ("submit", 10, 12), ("collect", 6, 10), ("collect", 10, 12)]


def test_busy_and_idle_from_op_timestamps():
    ops = [("forward", 0, 10.0, 10.5, 0), ("update", 0, 11.0, 11.5, 0)]
    assert windows.busy(ops) == (1.0, 1.5)
    assert abs(windows.idle(1.0, 1.5) - 1 / 3) < 1e-12 and windows.idle(0.0, 0.0) == 0.0
    tl = windows.Timelines()
    tl.add(0, ops)
    tl.add(0, [("forward", 1, 12.0, 12.5, 0)])
    (rec,) = tl.totals()
    assert rec["busy_s"] == 1.5 and rec["span_s"] == 2.5 and abs(rec["idle_fraction"] - 0.4) < 1e-12
