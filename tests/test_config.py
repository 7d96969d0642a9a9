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
    assert cfg.model.embedding_dim == 32 and cfg.train.epochs == 2 and cfg.loss == config.PRESETS["default"].loss
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


def test_defaults_do_not_flip_or_zero_init_and_natural_image_presets_flip(monkeypatch):
    from pathlib import Path
    cfg = config.load("default")
    assert cfg.data.flip is False and cfg.model.zero_init_residual is False
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert config.load("cars196_resnet50").data.flip and config.load("cub200_resnet50").data.flip


def test_shipped_pipeline_configs_load(monkeypatch):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    files = sorted((root / "pipelines").glob("*.json"))
    assert files
    for f in files:
        config.load(f.stem)


@pytest.mark.parametrize("overrides,match", [
    (["loss.name=triplet_margin"], r"Invalid value for `sampler.kind`: expected 'triplets' for loss 'triplet_margin'"),
    (["sampler.kind=triplets"], r"Invalid value for `sampler.kind`: expected 'pk' or 'random' for loss"),
    (["loss.name=circle", "loss.cross_replica=true"], r"`loss.cross_replica`: expected false for loss 'circle'"),
    (["loss.name=normalized_softmax", "loss.temperature=0"], r"`loss.temperature`: expected a number > 0"),
    (["loss.proxy_lr_multiplier=-1"], r"`loss.proxy_lr_multiplier`: expected a number > 0"),
    (["sampler.kind=random", "sampler.batch_size=1"], r"`sampler.batch_size`: expected an integer >= 2"),
    (["data.augment=false", "data.erase_prob=0.5"], r"`data.erase_prob`: expected 0 when data.augment=false"),
    (["data.augment=false", "data.flip=true"], r"`data.flip`: expected false when data.augment=false"),
    (["loss.name=batch_all_triplet", "loss.triplets=semi"], r"`loss.triplets`: expected one of \['semihard'"),
    (["whitening.power=1.5"], r"`whitening.power`: expected a number in \[0, 1\]"),
    (["whitening.dims=129"], r"`whitening.dims`: expected 0 \(all axes\) or 1..model.embedding_dim=128"),
    (["whitening.max_images=1"], r"`whitening.max_images`: expected an integer >= 2"),
    (["loss.name=triplet_margin", "sampler.kind=triplets", "loss.distance_metric=angular"],
     r"`loss.distance_metric`: expected 'squared-L2' \(the paper's\) or 'L2' for triplet_margin"),
])
def test_loss_and_sampler_combinations_are_checked(overrides, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", overrides)


@pytest.mark.parametrize("overrides", [
    ["loss.name=nca", "sampler.kind=random", "sampler.batch_size=32"],
    ["loss.name=binomial_deviance", "loss.beta=0"],  # beta is a similarity threshold: 0 is valid
    ["loss.name=binomial_deviance", "loss.beta=-0.2"],
    ["loss.name=triplet_margin", "sampler.kind=triplets", "loss.distance_metric=L2"],
    ["loss.name=normalized_softmax", "model.layer_norm=true", "loss.proxy_lr_multiplier=10", "loss.temperature=0.1"],
    ["loss.name=circle", "loss.gamma=32"],
    ["data.erase_prob=0.3"],
    ["data.flip=true", "model.zero_init_residual=true"],
    ["loss.name=batch_all_triplet", "loss.triplets=hard", "loss.margin=0.1"],
    ["whitening.enabled=false"],
    ["whitening.power=0", "whitening.dims=32"],
])
def test_valid_loss_and_sampler_combinations_pass(overrides):
    cfg = config.load("default", overrides)
    assert cfg.loss.name == next((o.split("=")[1] for o in overrides if o.startswith("loss.name=")), "triplet_semihard")


def test_changing_the_loss_starts_from_its_own_arguments():
    cfg = config.load("default", ["loss.cross_replica=true", "loss.name=lifted_struct"])
    assert cfg.loss.margin is None and cfg.loss.cross_replica is True  # preset's 0.5 was semi-hard's
    a = config.load("default", ["loss.margin=0.3", "loss.name=triplet_hard"])
    b = config.load("default", ["loss.name=triplet_hard", "loss.margin=0.3"])
    assert a == b and a.loss.margin == 0.3
    assert config.load("default", ["loss.margin=0.2"]).loss.margin == 0.2  # same loss: kept as set
    assert config.load("default").loss.margin == 0.5


def test_unset_loss_arguments_take_each_loss_default():
    from tfsim.losses import get_loss
    cfg = config.load("default", ["loss.name=binomial_deviance"])
    args = {k: v for k, v in config.to_dict(cfg)["loss"].items() if k != "name"}
    loss = get_loss(cfg.loss.name, **args)
    assert (loss.alpha, loss.beta, loss.cost) == (2.0, 0.5, 25.0)  # not multi-similarity's beta=50
    cfg = config.load("default", ["loss.name=triplet_hard", "loss.margin=null", "loss.soft=true"])
    loss = get_loss(cfg.loss.name, **{k: v for k, v in config.to_dict(cfg)["loss"].items() if k != "name"})
    assert (loss.margin, loss.soft, loss.distance_metric) == (1.0, True, "L2")
