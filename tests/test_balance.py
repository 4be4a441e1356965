"""Stage balancing: "auto" measures the blocks and separates the heavy blocks of a deliberately
unbalanced model."""
import pytest

from dfa_async import balance, config
from dfa_async.stage import Plan

from conftest import small_config


def test_auto_separates_the_heavy_blocks_of_an_unbalanced_model():
    """784-512-512-16-16-16-16-10: block 1 (784x512) alone costs more than everything after it, and
    blocks 1 and 2 together far more; one block per stage in order would be [3, 4]."""
    cfg = small_config(model={"widths": [512, 512, 16, 16, 16, 16]}, data={"shape": [1, 28, 28]},
                       train={"batch_size": 64}, runtime={"blocks_per_stage": "auto", "num_stages": 2})
    plan = Plan(cfg, (1, 28, 28), 10, 10, 10)
    with pytest.raises(RuntimeError, match="balance.resolve"):  # a plan describes; it measures nothing
        plan.partition()
    assert balance.resolve(plan) is plan
    assert plan.partition() == [[0], [1, 2, 3, 4, 5, 6]]
    costs = plan.block_costs
    assert len(costs) == 7 and costs[0] > costs[2] and costs[1] > costs[3]


def test_auto_in_settings_and_its_errors():
    cfg = config.load(None, ["runtime.blocks_per_stage=auto", "runtime.num_stages=2"])
    assert cfg.runtime.blocks_per_stage == "auto"
    with pytest.raises(config.ConfigError, match="runtime.blocks_per_stage: expected a list of integers .* or 'auto'"):
        config.load(None, ["runtime.blocks_per_stage=best"])
    with pytest.raises(config.ConfigError, match="runtime.num_stages: only used with runtime.blocks_per_stage"):
        config.load(None, ["runtime.num_stages=2"])
    with pytest.raises(config.ConfigError, match="runtime.num_stages: 9 stages for a model of 3 blocks"):
        config.load(None, ["runtime.blocks_per_stage=auto", "runtime.num_stages=9"])
