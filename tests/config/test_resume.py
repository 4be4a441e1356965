"""What a resumed run may change: settings compared across versions (missing ones at their defaults,
renamed ones under their new names), placement free, learning fixed."""
from dfa_async import config as config_mod


def test_a_run_of_a_version_without_a_setting_compares_it_at_its_default():
    old = config_mod.Config().to_dict()
    del old["model"]["block_order"], old["train"]["on_nonfinite"]
    assert config_mod.differences(old, config_mod.Config().to_dict()) == []
    new = config_mod.Config()
    new.model.block_order, new.runtime.threads = "paper", 2
    assert config_mod.differences(old, new.to_dict(), learned_only=True) == ["model.block_order: 'standard' -> 'paper'"]


def test_settings_saved_under_an_old_name_compare_under_the_new_one():
    old = config_mod.Config().to_dict()
    old["runtime"]["stages"] = old["runtime"].pop("blocks_per_stage")
    assert config_mod.differences(old, config_mod.Config().to_dict()) == []
    new = config_mod.Config()
    new.runtime.blocks_per_stage = [2, 1]
    assert config_mod.differences(old, new.to_dict()) == ["runtime.blocks_per_stage: [] -> [2, 1]"]
    assert config_mod.differences(old, new.to_dict(), learned_only=True) == []  # placement: not learned
