"""Typed config: presets, files, overrides, validation messages."""

import json

import pytest

from tfsim import config
from tfsim.errors import UserInputError


def test_default_preset_validates_and_round_trips_to_json():
    cfg = config.load()
    assert cfg == config.PRESETS["default"]
    assert config.from_dict(json.loads(json.dumps(config.to_dict(cfg)))) == cfg


def test_overrides_are_typed():
    cfg = config.load("default", ["train.epochs=3", "loss.margin=0.5", "data.augment=false",
                                  "data.test_classes=1,3", "model.weights=null", "export.name=x"])
    assert cfg.train.epochs == 3 and cfg.loss.margin == 0.5 and cfg.data.augment is False
    assert cfg.data.test_classes == (1, 3) and cfg.model.weights is None and cfg.export.name == "x"


@pytest.mark.parametrize("override,match", [
    ("train.epocs=3", r"Unknown config key `train.epocs`"),
    ("nosection.x=1", r"Unknown config key `nosection`"),
    ("train.epochs=three", r"Invalid value for `train.epochs`: expected an integer. Received: train.epochs='three'"),
    ("model.pooling=mean", r"expected one of \['avg', 'max', 'flatten'\]"),
    ("sampler.examples_per_class=1", r"examples_per_class`: expected an integer >= 2 so every batch holds positive"),
    ("data.augment=maybe", r"expected true or false"),
    ("loss.name=nope", r"loss.name`: expected one of"),
    ("train.epochs", r"expected the form section.key=value"),
])
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", [override])


def test_config_file_with_base_and_unknown_key(tmp_path, monkeypatch):
    good = tmp_path / "small.json"
    good.write_text(json.dumps({"base": "default", "model": {"embedding_dim": 32}, "train": {"epochs": 2}}))
    cfg = config.load(str(good))
    assert cfg.model.embedding_dim == 32 and cfg.train.epochs == 2 and cfg.loss == config.LossConfig()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"embeding_dim": 32}}))
    with pytest.raises(UserInputError, match="Unknown config key `model.embeding_dim`"):
        config.load(str(bad))
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"train": {"epochs": 2.5}}))
    with pytest.raises(UserInputError, match="train.epochs`: expected an integer"):
        config.load(str(typed))
    with pytest.raises(UserInputError, match="Unknown config 'nothing'"):
        config.load("nothing")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "mine.json").write_text(json.dumps({"train": {"epochs": 4}}))
    assert config.load("mine").train.epochs == 4


def test_shipped_pipeline_configs_load(monkeypatch):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    files = sorted((root / "pipelines").glob("*.json"))
    assert files
    for f in files:
        config.load(f.stem)
