import pytest

from scrollseg.config import build_config, diff, preset_names
from scrollseg.errors import ConfigError


def test_presets_load_and_default_matches_the_baseline_size():
    assert {"tiny", "default", "kaggle_2xT4"} <= set(preset_names())
    for name in preset_names():
        build_config(name)
    cfg = build_config("default")
    assert len(cfg.model.features) == 6 and cfg.model.features[0] == 32 and cfg.model.features[-1] == 320
    assert cfg.data.patch_size == [128, 128, 128]


def test_dotted_overrides_are_typed_and_checked():
    cfg = build_config("tiny", ["optim.lr=1e-4", "data.patch_size=[16,16,16]", "inference.tta=true"])
    assert cfg.optim.lr == 1e-4 and cfg.data.patch_size == [16, 16, 16] and cfg.inference.tta is True
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        build_config("tiny", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="integer"):
        build_config("tiny", ["data.batch_size=two"])
    with pytest.raises(ConfigError, match="divisible"):
        build_config("tiny", ["data.patch_size=[30,32,32]"])
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config("nope")


def test_diff_lists_changed_keys():
    a, b = build_config("tiny"), build_config("tiny", ["optim.lr=0.5"])
    assert diff(a, b) == ["optim.lr: 0.003 -> 0.5"]
    assert a.digest() != b.digest()
