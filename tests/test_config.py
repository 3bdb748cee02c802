"""Config files, presets and --set overrides, with the promised error messages."""

import json

import pytest

from uvim_givt import config as C


def test_preset_and_override(tmp_path):
    cfg = C.load_config("configs/panoptic.py:size=paper", ["givt.sampling.beam_size=4",
                                                           "vae.beta=0.001"])
    assert cfg.size == "paper" and cfg.data.image_size == 512
    assert cfg.givt.sampling.beam_size == 4 and cfg.vae.beta == 0.001
    path = C.save_config(cfg, str(tmp_path))
    assert json.load(open(path))["givt"]["sampling"]["beam_size"] == 4
    assert C.load_saved_config(str(tmp_path)).vae.beta == 0.001


def test_unknown_key_lists_near_keys():
    with pytest.raises(C.ConfigError) as e:
        C.load_config("configs/panoptic.py", ["vae.model.widht=64"])
    msg = str(e.value)
    assert "unknown config key 'vae.model.widht'" in msg
    assert "vae.model.width" in msg and "valid keys under 'vae.model'" in msg


def test_unknown_top_level_key():
    with pytest.raises(C.ConfigError, match="unknown config key 'trian'.*valid keys: .*data"):
        C.load_config("configs/panoptic.py", ["trian=1"])


@pytest.mark.parametrize("override,expect", [
    ("vae.model.width=abc", "vae.model.width expects int"),
    ("vae.beta=yes", "vae.beta expects float"),
    ("data.flip=3", "data.flip expects bool"),
    ("vae", "not of the form key=value"),
    ("vae=1", "is a group of settings"),
])
def test_wrong_type_messages(override, expect):
    with pytest.raises(C.ConfigError, match=expect):
        C.load_config("configs/panoptic.py", [override])


def test_int_to_float_and_tuple_coercion():
    cfg = C.load_config("configs/panoptic.py", ["vae.beta=1", "vae.model.patch_size=(4,4)"])
    assert isinstance(cfg.vae.beta, float) and tuple(cfg.vae.model.patch_size) == (4, 4)


def test_config_arg_errors():
    with pytest.raises(C.ConfigError, match="unknown config argument 'sise'.*did you mean 'size'"):
        C.load_config("configs/panoptic.py:sise=tiny")
    with pytest.raises(ValueError, match="unknown size preset 'huge'"):
        C.load_config("configs/panoptic.py:size=huge")
    with pytest.raises(C.ConfigError, match="not found"):
        C.load_config("configs/nope.py")
