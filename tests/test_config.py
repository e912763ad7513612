"""Configs: YAML + dotted overrides, unknown keys with a did-you-mean, type and size checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.config import ExperimentConfig, load_config
from polymodal.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(None, ["model.decoder.hidden_dim=64", "train.lr=1e-3", "data.path=null", "train.amp=true"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.model.decoder.hidden_dim == 64 and cfg.train.lr == 0.001 and cfg.train.amp is True


def test_int_accepted_where_float_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.decoder.hiden_dim=3", "did you mean 'hidden_dim'"),
    ("trian.steps=3", "did you mean 'train'"),
    ("train.steps=many", "expected an integer"),
    ("train.amp=yes please", "expected true or false"),
    ("model.decoder.hidden_dim=-5", "must not be negative"),
    ("train.steps", "key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    from polymodal.train.tasks import load_task_config

    task, cfg = load_task_config(path, [])
    assert callable(task) and cfg.train.steps > 0


def test_unknown_registry_name_suggests():
    from polymodal.config import EncoderConfig
    from polymodal.nn.encoders import build_encoder

    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_encoder(EncoderConfig(name="resnet19"))
