"""Building a config: presets, files, overrides, resolve; and no TensorFlow while doing it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfsim import config
from tfsim.errors import UserInputError

ROOT = Path(__file__).resolve().parents[2]

def test_default_preset_validates_and_round_trips_to_json():
    cfg = config.load()
    assert cfg == config.resolve(config.load_preset("default"))
    assert (cfg.data.source, cfg.data.test_classes, cfg.run.name) == ("default", (2, 4, 5, 7), "fashion_mnist_small")
    assert (cfg.loss.name, cfg.loss.margin) == ("triplet_semihard", 0.5)
    assert config.from_dict(json.loads(json.dumps(config.to_dict(cfg)))) == cfg


@pytest.mark.parametrize("overrides,name", [
    ([], "fashion_mnist_small"),
    (["data.source=folder", "data.path=/data/My Birds/"], "My Birds"),
    (["data.source=tfds", "data.tfds_name=cars196:2.1.0"], "cars196"),
    (["data.source=folder", "data.path=/x/y", "run.name=mine"], "mine"),
])
def test_run_is_named_after_the_data(overrides, name):
    cfg = config.load("default", overrides)
    assert cfg.run.name == name and config.resolve(cfg) == cfg


def test_another_data_source_does_not_inherit_the_presets_split():
    # The default preset holds out the shipped set's classes 2, 4, 5, 7; a user's folder must
    # not silently get them (the second half of its classes instead, unless set).
    cfg = config.load("default", ["data.source=folder", "data.path=/x"])
    assert cfg.data.test_classes == () and cfg.data.augment is True
    cfg = config.load("default", ["data.test_classes=5,6", "data.source=folder", "data.path=/x"])
    assert cfg.data.test_classes == (5, 6)  # set in the same update: kept, whatever the order
    cfg = config.load("default", ["data.augment=false", "data.source=folder", "data.path=/x"])
    assert cfg.data.augment is False  # augmentation does not belong to a source
    assert config.load("default", ["data.augment=false"]).data.test_classes == (2, 4, 5, 7)


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
    ("train.learning_rate=inf", r"Invalid value for `train.learning_rate`: expected a finite number. "
                                r"Received: train.learning_rate='inf'"),
    ("loss.margin=nan", r"`loss.margin`: expected a finite number"),
])
def test_bad_overrides_are_clear_errors(override, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", [override])


def test_config_file_with_base_and_unknown_key(tmp_path, monkeypatch):
    good = tmp_path / "small.json"
    good.write_text(json.dumps({"base": "default", "model": {"embedding_dim": 32}, "train": {"epochs": 2}}))
    cfg = config.load(str(good))
    assert cfg.model.embedding_dim == 32 and cfg.train.epochs == 2 and cfg.loss == config.load("default").loss
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
    no_base = tmp_path / "no_base.json"  # no "base": starts from the default preset
    no_base.write_text(json.dumps({"train": {"epochs": 4}}))
    assert config.load(str(no_base)).data.test_classes == (2, 4, 5, 7)
    neutral = tmp_path / "neutral.json"  # "base": null starts from Config()
    neutral.write_text(json.dumps({"base": None, "train": {"epochs": 4}}))
    assert config.load(str(neutral)).loss.margin is None
    with pytest.raises(UserInputError, match=r"expected a preset name \['cars196_resnet50'"):
        config.load("mine")


def test_defaults_do_not_flip_or_zero_init_and_natural_image_presets_flip():
    cfg = config.load("default")
    assert cfg.data.flip is False and cfg.model.zero_init_residual is False
    assert config.load("cars196_resnet50").data.flip and config.load("cub200_resnet50").data.flip


def test_shipped_presets_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # presets are package data, not files next to the working directory
    assert config.presets() == ["cars196_resnet50", "cub200_resnet50", "default", "dogs_resnet50", "inshop_resnet50",
                                "sop_resnet50", "tiny_imagenet"]
    cars, cub = config.load("cars196_resnet50"), config.load("cub200_resnet50")
    assert (cars.data.tfds_name, cars.run.name, cars.data.test_classes) == ("cars196", "cars196_resnet50", ())
    assert (cub.data.tfds_name, cub.run.name, cub.model.backbone) == ("caltech_birds2011", "cub200_resnet50",
                                                                      "resnet50")


def test_changing_the_loss_starts_from_its_own_arguments():
    cfg = config.load("default", ["loss.cross_replica=true", "loss.name=lifted_struct"])
    assert cfg.loss.margin is None and cfg.loss.cross_replica is True  # preset's 0.5 was semi-hard's
    a = config.load("default", ["loss.margin=0.3", "loss.name=triplet_hard"])
    b = config.load("default", ["loss.name=triplet_hard", "loss.margin=0.3"])
    assert a == b and a.loss.margin == 0.3
    assert config.load("default", ["loss.margin=0.2"]).loss.margin == 0.2  # same loss: kept as set
    assert config.load("default").loss.margin == 0.5


def test_each_sampler_kind_and_backbone_has_its_own_options():
    cfg = config.load("default")
    s, m = cfg.sampler, cfg.model
    assert (s.classes_per_batch, s.examples_per_class, s.batch_size, s.triplets_per_query) == (6, 10, None, None)
    assert (m.width, m.blocks_per_stage, m.zero_init_residual) == (32, 1, False)
    s = config.load("default", ["sampler.kind=random", "loss.name=nca"]).sampler
    assert (s.classes_per_batch, s.batch_size, s.triplets_per_query) == (None, 60, None)
    s = config.load("default", ["sampler.kind=triplets", "loss.name=triplet_margin"]).sampler
    assert (s.batch_size, s.triplets_per_query) == (60, 4)
    m = config.load("default", ["model.backbone=resnet50"]).model
    assert (m.width, m.blocks_per_stage, m.zero_init_residual) == (None, None, None)
    # A resolved config (e.g. a run's config.json) switched to another kind / backbone starts
    # that one from its defaults instead of carrying the old one's options into an error.
    resolved = config.from_dict(config.to_dict(config.load("default")))
    switched = config.resolve(config.apply_overrides(resolved, ["sampler.kind=random", "loss.name=nca",
                                                                "model.backbone=resnet50"]))
    config.validate(switched)
    assert switched.sampler.classes_per_batch is None and switched.model.width is None


def test_loading_and_validating_import_no_tensorflow():
    # The commands load their config before TensorFlow (about 6 s), so that a mistake is reported at once.
    script = """
import sys
from tfsim import config
from tfsim.errors import UserInputError
config.load("default", ["train.epochs=2", "model.embedding_dim=32"])
for name in config.presets():
    lists = config.load_preset(name).data.source == "list"
    config.load(name, ["data.path=/x/Ebay_train.txt"] if lists else [])
config.load("default", ["data.source=list", "data.path=/x/mine.csv"])
config.load("default", ["model.head=hash", "whitening.enabled=false", "loss.quantization_weight=0.1"])
for bad in (["loss.margin=-1"], ["loss.name=circle", "loss.gamma=0"], ["sampler.examples_per_class=1"],
            ["model.backbone=resnet50", "model.width=8"], ["loss.name=nope"], ["train.epochs=x"]):
    try:
        config.load("default", bad)
    except UserInputError:
        continue
    raise SystemExit(f"no error for {bad}")
import tfsim.pipelines._cli
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_preset_says_in_one_line_what_it_is_for(tmp_path):
    described = config.preset_descriptions()
    assert list(described) == config.presets()
    for name, text in described.items():
        assert text.strip() and "\n" not in text and len(text) <= 160, name
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"base": "cars196_resnet50", "description": "my cars", "train": {"epochs": 2}}))
    assert config.load(str(mine)).train.epochs == 2  # a description is no config key, and not inherited
    mine.write_text(json.dumps({"description": ["two", "lines"]}))
    with pytest.raises(UserInputError, match=r"Invalid value for `description` in .*mine.json': expected a string"):
        config.load(str(mine))


@pytest.mark.parametrize("name,meant", [
    ("cars196", "cars196_resnet50"),
    ("defualt", "default"),
    ("sop", "sop_resnet50"),
    ("tiny-imagenet", "tiny_imagenet"),
    ("resnet50", "cars196_resnet50, cub200_resnet50 or dogs_resnet50"),
    ("nothing", None),
])
def test_an_unknown_preset_suggests_the_close_ones(name, meant):
    with pytest.raises(UserInputError, match=rf"^Unknown config '{name}'") as err:
        config.load(name)
    if meant:
        assert f"(did you mean {meant}?): expected a preset name [" in str(err.value)
    else:
        assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("text,value", [("true", True), ("1", True), ("yes", True), ("False", False), ("0", False),
                                        ("no", False), ("auto", "auto"), ("AUTO", "auto")])
def test_a_choice_of_true_false_or_auto_takes_the_bool_spellings(text, value):
    assert config.load("default", [f"whitening.enabled={text}"]).whitening.enabled == value


@pytest.mark.parametrize("bad", ["maybe", "2"])
def test_a_choice_of_true_false_or_auto_refuses_other_values(bad):
    with pytest.raises(UserInputError, match=r"`whitening.enabled`: expected one of \[true, false, 'auto'\]"):
        config.load("default", [f"whitening.enabled={bad}"])


def test_a_json_choice_takes_only_a_bool_or_the_string(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"base": "default", "whitening": {"enabled": 1}}')
    with pytest.raises(UserInputError, match="whitening.enabled"):
        config.load(str(path))
