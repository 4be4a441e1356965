"""The wire schedule (dfa_async/wire.py) as a table, and its checker: under in-order matching per
communicator (nccl's semantics) the schedule never deadlocks and every receive gets the message it
expects, for any world, depth and cut of the run into windows, evaluations, probes, checkpoints and
resumes; with one communicator per pair of ranks (nccl's own default, and this project's order before
the channels were split), the same items deadlock, which the checker finds."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfa_async import schedule, wire
from dfa_async.wire import Item, Msg

A, E = (4, 5), (4, 10)


def short(items):
    return [(i.op, i.key, i.channel) for i in items]


def test_a_window_of_two_stages_at_depth_one_as_a_table():
    marks = schedule.boundaries(2, 2, 0)
    assert short(wire.window(0, 2, 0, 2, 1, marks, [A, E], E)) == [
        ("recv", 0, (1, 0)), ("forward", 0, None), ("send", 0, (0, 1)), ("wait", 0, (1, 0)), ("update", 0, None),
        ("recv", 1, (1, 0)), ("forward", 1, None), ("send", 1, (0, 1)), ("wait", 1, (1, 0)), ("update", 1, None),
        ("flush", 2, None)]
    assert short(wire.window(1, 2, 0, 2, 1, marks, [A, E], E)) == [
        ("recv", 0, (0, 1)), ("recv", 1, (0, 1)),
        ("wait", 0, (0, 1)), ("forward", 0, None), ("send", 0, (1, 0)), ("update", 0, None),
        ("wait", 1, (0, 1)), ("forward", 1, None), ("send", 1, (1, 0)), ("update", 1, None)]


def test_messages_carry_kind_step_shape_and_dtype():
    items = wire.window(1, 3, 5, 6, 2, [9], [(4, 7), (4, 8), E], E, "bfloat16")
    sent = [i.msg for i in items if i.op == "send"]
    assert sent == [Msg("act", 5, (4, 8), "bfloat16")]
    assert Msg("err", 5, E, "float32") in [i.msg for i in items if i.op == "recv"]  # e stays float32
    narrow = wire.window(1, 3, 5, 6, 2, [9], [(4, 7), (4, 8), E], E, "bfloat16", "bfloat16")
    assert Msg("err", 5, E, "bfloat16") in [i.msg for i in narrow if i.op == "recv"]


def test_the_ping_passes_every_channel_and_the_hello_opens_them_in_order():
    for world in range(2, 7):
        pinged = {i.channel for r in range(world) for i in wire.ping(r, world) if i.op == "send"}
        assert pinged == set(wire.channels(world))
        wire.check([[wire.hello(r, world) for r in range(world)], [wire.ping(r, world) for r in range(world)]], 1)
    assert [i.channel for i in wire.hello(1, 3) if i.op in ("send", "recv")] == [(0, 1), (1, 2), (2, 1)]


def test_the_checker_finds_a_mismatched_message():
    bad = [[Item("send", 0, (0, 1), Msg("act", 0, (4, 5)))],
           [Item("recv", 0, (0, 1), Msg("act", 0, (4, 6))), Item("wait", 0, (0, 1), Msg("act", 0, (4, 6)))]]
    with pytest.raises(wire.Mismatch, match="posted"):
        wire.check([bad], 1)


def test_the_checker_finds_a_receive_that_never_comes():
    lonely = [[], [Item("recv", 0, (0, 1), Msg("act", 0, A)), Item("wait", 0, (0, 1), Msg("act", 0, A))]]
    with pytest.raises(wire.Deadlock, match="rank 1 stops at wait act 0"):
        wire.check([lonely], 1)


def test_back_pressure_holds_a_sender_whose_receiver_never_posts():
    sends = [[Item("send", t, (0, 1), Msg("act", t, A)) for t in range(wire.max_sends(0, 2, 1) + 1)], []]
    with pytest.raises(wire.Deadlock, match="rank 0 stops at its outstanding sends"):
        wire.check([sends], 1)


def run_calls(world, depth, total, spe, every, cuts, evals):
    """The calls a driver makes: hello, then windows cut at every boundary and at `cuts` (probes, the
    driver's own windows), an evaluation after the windows in `evals`."""
    marks = schedule.boundaries(total, spe, every)
    acts = [(3, 2 + k) for k in range(world)]  # every stage's message of another shape
    outs = [a[1:] for a in acts]
    ends = sorted(set(marks) | {c for c in cuts if c < total})
    calls, start = [[wire.hello(r, world) for r in range(world)]], 0
    resumes = []
    for j, end in enumerate(ends):
        calls.append([wire.window(r, world, start, end + 1, depth, marks, acts, (3, 10)) for r in range(world)])
        if j in evals:
            calls.append([wire.evaluation(r, world, [3, 3, 1], outs) for r in range(world)])
        if end in marks:
            resumes.append(len(calls))  # a restart could resume here, on fresh channels
        start = end + 1
    return calls, resumes


@settings(max_examples=600, deadline=None)
@given(world=st.integers(2, 8), depth=st.integers(1, 4), total=st.integers(1, 30), data=st.data())
def test_no_deadlock_and_every_receive_gets_its_message(world, depth, total, data):
    spe = data.draw(st.integers(1, total))
    every = data.draw(st.integers(0, total))
    cuts = data.draw(st.lists(st.integers(0, total - 1), max_size=6))
    evals = set(data.draw(st.lists(st.integers(0, 8), max_size=3)))
    calls, resumes = run_calls(world, depth, total, spe, every, cuts, evals)
    wire.check(calls, depth)
    # A resume after any boundary: new process groups (fresh channels), the hello, the rest of the run.
    at = data.draw(st.sampled_from(resumes))
    wire.check([calls[0]] + calls[at:], depth)


@pytest.mark.parametrize("world,depth", [(2, 1), (3, 2), (4, 3)])
def test_one_communicator_per_pair_of_ranks_deadlocks(world, depth):
    """The order of item 2 of issue 23, kept: on a pair's one in-order stream, the head has posted the
    receives of its next inputs before it sends e_t, and the stage before it has posted the receive of
    e_t before it sends its next output, so each waits for the other. Splitting the pair into one
    channel per direction is what the schedule relies on."""
    calls, _ = run_calls(world, depth, 12, 12, 0, [], set())
    with pytest.raises(wire.Deadlock):
        wire.check(calls[1:], depth, communicator=frozenset)
    wire.check(calls[1:], depth)
