"""Validation: each section's checks, with the messages that name the key and the fix."""

import dataclasses

import pytest

from tfsim import config
from tfsim.config.validate import SECTION_CHECKS
from tfsim.errors import UserInputError

@pytest.mark.parametrize("overrides,match", [
    (["data.path=/x"], r"Invalid value for `data.path`: expected null unless data.source=folder or list \(add --set "
                       r"data.source=folder"),
    (["data.tfds_name=cars196"], r"Invalid value for `data.tfds_name`: expected null unless data.source=tfds"),
])
def test_dataset_keys_without_their_source_are_errors(overrides, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", overrides)


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
     r"`loss.distance_metric`: expected one of \['squared-L2', 'L2'\] for the explicit-triplet loss. "
     r"Received: loss.distance_metric='angular'"),
    # Argument values are checked by the losses themselves; the config reports them by key.
    (["loss.margin=-0.1"], r"Invalid value for `loss.margin`: expected a number >= 0. Received: loss.margin=-0.1"),
    (["loss.name=multi_similarity", "loss.alpha=0"], r"`loss.alpha`: expected a number > 0"),
    (["loss.name=binomial_deviance", "loss.cost=-1"], r"`loss.cost`: expected a number > 0"),
    (["loss.name=circle", "loss.gamma=0"], r"`loss.gamma`: expected a number > 0"),
    (["loss.memory_size=-1"], r"`loss.memory_size`: expected an integer >= 0"),
    (["loss.memory_size=64", "loss.memory_warmup_steps=-1"], r"`loss.memory_warmup_steps`: expected an integer"),
    (["loss.name=normalized_softmax", "loss.memory_size=64"],
     r"`loss.memory_size`: expected 0 with loss 'normalized_softmax': a cross-batch memory serves"),
    (["loss.name=circle", "loss.memory_size=64"], r"`loss.memory_size`: expected 0 with loss 'circle'"),
    (["model.head=hash", "whitening.enabled=false", "loss.memory_size=64"],
     r"`loss.memory_size`: expected 0 with model.head=hash"),
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


@pytest.mark.parametrize("overrides,match", [
    (["loss.temperature=0.1"], r"Invalid value for `loss.temperature`: expected null for loss 'triplet_semihard', "
                               r"which takes \['margin', 'distance_metric', 'cross_replica'\]"),
    (["loss.name=lifted_struct", "loss.distance_metric=angular"], r"`loss.distance_metric`: expected null for loss "
                                                                  r"'lifted_struct'"),
    (["loss.name=nca", "loss.margin=0.2"], r"`loss.margin`: expected null for loss 'nca', which takes \['scale'"),
])
def test_arguments_the_loss_does_not_take_are_errors(overrides, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", overrides)


@pytest.mark.parametrize("overrides,match", [
    (["model.backbone=resnet50", "model.width=64"],
     r"Invalid value for `model.width`: expected null for backbone 'resnet50', which takes \[\]"),
    (["model.backbone=resnet50", "model.zero_init_residual=true"], r"`model.zero_init_residual`: expected null"),
    (["sampler.batch_size=32"], r"`sampler.batch_size`: expected null for sampler.kind='pk', which takes "
                                r"\['classes_per_batch', 'examples_per_class', 'small_classes'\]"),
    (["sampler.kind=random", "loss.name=nca", "sampler.examples_per_class=4"],
     r"`sampler.examples_per_class`: expected null for sampler.kind='random', which takes \['batch_size'\]"),
    (["sampler.triplets_per_query=2"], r"`sampler.triplets_per_query`: expected null for sampler.kind='pk'"),
])
def test_options_of_another_variant_are_errors(overrides, match):
    with pytest.raises(UserInputError, match=match):
        config.load("default", overrides)


def test_natural_photo_presets_crop_and_small_images_shift():
    for name, extra in (("cars196_resnet50", []), ("cub200_resnet50", []), ("sop_resnet50", ["data.path=/x.csv"])):
        cfg = config.load(name, extra)
        assert (cfg.data.augmentation, cfg.model.center_crop, cfg.data.flip) == ("random_resized_crop", 0.875, True)
    cfg = config.load("default")
    assert (cfg.data.augmentation, cfg.model.center_crop) == ("shift", 1.0)
    with pytest.raises(UserInputError, match=r"`model.center_crop`: expected a fraction of the side in \[0.25, 1\]"):
        config.load("default", ["model.center_crop=1.2"])
    with pytest.raises(UserInputError, match=r"`data.augmentation`: expected 'shift' when data.augment=false"):
        config.load("default", ["data.augment=false", "data.augmentation=random_resized_crop"])


def test_every_section_has_its_check_and_validate_runs_them_all():
    assert [check.__name__.removeprefix("validate_") for check in SECTION_CHECKS] == [
        "run", "data", "model", "loss", "sampler", "train", "eval", "whitening", "export", "index", "tune"]
    assert {check.__name__.removeprefix("validate_") for check in SECTION_CHECKS} == {
        f.name for f in dataclasses.fields(config.Config)}
    cfg = config.load("default")
    for section, bad in (("train", {"epochs": 0}), ("index", {"num_neighbors": 0}), ("tune", {"max_trials": -1})):
        broken = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **bad)})
        with pytest.raises(UserInputError, match=rf"Invalid value for `{section}\.{next(iter(bad))}`"):
            config.validate(broken)


def test_a_metric_to_select_or_tune_by_must_be_one_the_evaluation_reports():
    with pytest.raises(UserInputError, match=r"`train.select_metric`: expected one of \['recall@1', 'recall@2', "
                                             r"'map@r', 'r_precision'\] \(recall@K needs K in eval.recall_ks\)"):
        config.load("default", ["eval.recall_ks=1,2", "train.select_metric=recall@4"])
    with pytest.raises(UserInputError, match=r"`tune.objective`: expected one of \['recall@1', 'recall@8', 'map@r'"):
        config.load("default", ["eval.recall_ks=1,8", "tune.objective=recall@2"])
    assert config.load("default", ["eval.recall_ks=1,8", "tune.objective=recall@8"]).tune.objective == "recall@8"


def test_a_forced_calibration_needs_validation_classes_held_out_of_training():
    assert config.load("default").export.calibration == "auto"  # calibrated only when classes are held out
    with pytest.raises(UserInputError, match=r"`export.calibration`: expected 'auto' or 'off' unless "
                                             r"train.select_best=true.*Received: export.calibration='precision'"):
        config.load("default", ["export.calibration=precision"])
    with pytest.raises(UserInputError, match=r"`export.calibration`: expected 'auto' or 'off' with model.head=hash"):
        config.load("default", ["export.calibration=f1", "train.select_best=true", "model.head=hash",
                                "whitening.enabled=false"])
    with pytest.raises(UserInputError, match=r"`export.calibration_precision`: expected a target precision in"):
        config.load("default", ["export.calibration_precision=0"])
    for ok in (["export.calibration=precision", "train.select_best=true"], ["export.calibration=off"],
               ["export.calibration=auto", "model.head=hash", "whitening.enabled=false"]):
        config.load("default", ok)
