"""Process-wide settings: made by the process that runs stages, never by building one."""
import torch

from dfa_async import process
from dfa_async.stage import Plan, Stage

from conftest import small_config


def test_building_a_stage_leaves_the_thread_count_alone_and_threads_restores_it():
    before = torch.get_num_threads()
    cfg = small_config(runtime={"threads": before + 1})
    Stage(Plan(cfg, (1, 8, 8), 10, 4, 4), [0, 1, 2])
    assert torch.get_num_threads() == before
    with process.threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
