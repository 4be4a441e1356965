from dfa_async.perf import modes
from dfa_async.perf.profile import block_profile, fastest


def _block(f, u, o, bp, k=0):
    return {"block": k, "dfa_forward_s": f, "dfa_update_s": u, "optimizer_s": o, "bp": bp,
            "out_bytes": 40, "param_bytes": 400}


def test_fastest_keeps_each_cost_at_its_smallest_round():
    a = [_block(2.0, 5.0, 1.0, {"32": [3.0, 4.0], "64": [6.0, 9.0]}), _block(1.0, 1.0, 1.0, {"32": [1.0, 1.0]}, 1)]
    b = [_block(3.0, 4.0, 0.5, {"32": [2.0, 8.0], "64": [7.0, 8.0]}), _block(0.5, 2.0, 1.5, {"32": [1.5, 0.5]}, 1)]
    got = fastest([a, b])
    assert got == [_block(2.0, 4.0, 0.5, {"32": [2.0, 4.0], "64": [6.0, 8.0]}),
                   _block(0.5, 1.0, 1.0, {"32": [1.0, 0.5]}, 1)]
    assert fastest([a]) == a


def test_block_profile_of_a_real_model_has_every_block_and_row_count():
    _, plan, _ = modes.setup(16, 32, 1, 2, 1, 2)
    prof = block_profile(plan, microbatches=(4,), workers=2)
    assert [b["block"] for b in prof] == list(range(plan.num_blocks))
    for b in prof:
        assert set(b["bp"]) == {"8", "16", "32"}  # microbatch, ddp share, minibatch
        assert b["dfa_forward_s"] > 0 and b["dfa_update_s"] > 0 and min(min(v) for v in b["bp"].values()) > 0
    assert prof[0]["out_bytes"] == 4 * 32 * 16 and prof[0]["param_bytes"] == 4 * (16 * 16 + 16)
    merged = fastest([prof, block_profile(plan, (4,), 2)])
    assert all(m["dfa_forward_s"] <= p["dfa_forward_s"] for m, p in zip(merged, prof))
