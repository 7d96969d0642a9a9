"""Building a config: named presets, JSON config files, `--set` overrides, and `resolve`.

A run is described by one `Config`, built from a preset (a JSON file shipped in
`tfsim/presets/`, named without its suffix: `default`, `cars196_resnet50`, ...; or the path
of any JSON file) plus `--set section.key=value` overrides, then checked by
`tfsim.config.validate` before any work starts. The resolved config (`resolve()`: the run's
name and the variants' null options filled in) is written next to the run as `config.json`.

A JSON config file is a partial nested dict over the preset it names as `base`
("default" when absent; null for `Config()`): `{"base": "default", "model":
{"embedding_dim": 128}}`, with an optional one-line "description" (what `--list-configs`
prints for a preset). Unknown sections or keys and wrongly typed values are errors that name
the key; an unknown preset name suggests the shipped presets close to it.

Example:
    >>> cfg = load("default", ["train.epochs=2", "model.embedding_dim=32"])
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from tfsim import options
from tfsim.config.schema import BACKBONE_KEYS, VARIANT_KEYS, Config
from tfsim.config.validate import validate
from tfsim.data.formats import dataset_name
from tfsim.errors import UserInputError

# Presets shipped with the package. default.json: the shipped Fashion-MNIST subset with its
# held-out classes 2, 4, 5, 7, and the semi-hard triplet loss at margin 0.5 (tfa's default is
# 1.0; 0.5 was measured best on the shipped data among 0.05-1.0).
PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"


def presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_descriptions() -> dict[str, str]:
    """Each shipped preset's one-line `description` (from its JSON file), by name."""
    return {name: str(json.loads((PRESET_DIR / f"{name}.json").read_text()).get("description", ""))
            for name in presets()}


def _close_presets(name: str) -> list[str]:
    """Up to 3 shipped presets a mistyped `name` may have meant: those containing it (or contained in
    it, e.g. "default.json"), then those `difflib` finds close."""
    names, low = presets(), name.lower()
    close = [n for n in names if len(low) >= 3 and (low in n or n in low)]
    close += difflib.get_close_matches(low, names, n=3, cutoff=0.6)
    return list(dict.fromkeys(close))[:3]



def coerce(value: Any, hint: Any, key: str, from_string: bool) -> Any:
    """Converts/checks `value` against the type `hint`; raises UserInputError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected: str):
        raise UserInputError(
            f"Invalid value for `{key}`: expected {expected}. Received: {key}={value!r}")

    if origin is typing.Union:  # Optional[X]
        if value is None or (from_string and str(value).lower() in ("null", "none")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(value, inner, key, from_string)
    if origin is Literal:
        if True in args and from_string:  # e.g. true / false / "auto": the bool spellings, any case
            text = str(value).lower()
            value = True if text in ("true", "1", "yes") else False if text in ("false", "0", "no") else (
                text if text in args else value)
        if not any(type(a) is type(value) and a == value for a in args):  # (1 == True, but 1 is no choice)
            fail(f"one of [{', '.join(str(a).lower() if isinstance(a, bool) else repr(a) for a in args)}]"
                 if True in args else f"one of {list(args)}")
        return value
    if origin is tuple:
        if from_string:
            value = [v for v in str(value).split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            fail("a list (comma-separated on the command line)")
        return tuple(coerce(v, args[0], key, from_string) for v in value)
    if hint is bool:
        if from_string and str(value).lower() in ("true", "1", "yes"):
            return True
        if from_string and str(value).lower() in ("false", "0", "no"):
            return False
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint in (int, float):
        expected = "an integer" if hint is int else "a finite number"
        if from_string:
            try:
                number = hint(str(value))
            except ValueError:
                fail(expected)
        else:
            allowed = (int,) if hint is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                fail(expected)
            number = hint(value)
        if not math.isfinite(number):  # inf / nan would train on NaN to the end
            fail(expected)
        return number
    if hint is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise TypeError(f"Unsupported config type {hint!r} for {key}")  # a bug in this module


def _replace(section: Any, updates: dict, prefix: str, from_string: bool) -> Any:
    hints = typing.get_type_hints(type(section))
    variant = VARIANT_KEYS.get(type(section))
    if variant is not None and updates.get(variant[0], getattr(section, variant[0])) != getattr(section, variant[0]):
        # Another loss / dataset / sampler / backbone: its own keys start from their defaults.
        fresh = type(section)()
        section = dataclasses.replace(section, **{k: getattr(fresh, k) for k in variant[1]})
    changes = {}
    for key, value in updates.items():
        if key not in hints:
            raise UserInputError(
                f"Unknown config key `{prefix}{key}`: expected one of "
                f"{[prefix + k for k in hints]}. Check the spelling.")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise UserInputError(
                    f"Invalid value for `{prefix}{key}`: expected a section (a JSON object) with keys "
                    f"{list(typing.get_type_hints(hints[key]))}. Received: {value!r}")
            changes[key] = _replace(getattr(section, key), value, f"{prefix}{key}.", from_string)
        else:
            changes[key] = coerce(value, hints[key], prefix + key, from_string)
    return dataclasses.replace(section, **changes)


def from_dict(updates: dict, base: Optional[Config] = None) -> Config:
    """`base` (default: the default preset) with the nested `updates` applied (typed values)."""
    return _replace(base or load_preset("default"), updates, "", from_string=False)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Applies `section.key=value` strings (values parsed by the key's type), all at once.

    All overrides form one update, so their order does not matter (`loss.margin=0.3`
    before or after `loss.name=triplet_hard` gives the same config); a key given twice
    keeps its last value.
    """
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserInputError(
                f"Invalid override {item!r}: expected the form section.key=value, e.g. train.epochs=3.")
        key, value = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserInputError(f"Invalid override {item!r}: `{part}` is set both as a value and a section.")
        node[parts[-1]] = value
    return _replace(cfg, nested, "", from_string=True) if nested else cfg


def load_preset(name_or_file: str, _chain: tuple = ()) -> Config:
    """A preset shipped in `tfsim/presets/` (by name), or a JSON config file (by path).

    `_chain`: the `(name, resolved path)` of the files whose `base` led here, to name a cycle.
    """
    shipped = PRESET_DIR / f"{name_or_file}.json"
    path = shipped if "/" not in name_or_file and shipped.is_file() else Path(name_or_file)
    if path.is_file() and any(path.resolve() == seen for _, seen in _chain):
        names = [name for name, _ in _chain] + [name_or_file]
        raise UserInputError(
            f"Config files name each other as `base`: {' -> '.join(names)}. Expected a chain of `base` "
            "files that ends at a preset or at \"base\": null; remove one of these `base` entries.")
    if not path.is_file():
        close = _close_presets(name_or_file)
        listed = ", ".join(close[:-1]) + " or " + close[-1] if len(close) > 1 else "".join(close)
        meant = f" (did you mean {listed}?)" if close else ""
        raise UserInputError(
            f"Unknown config {name_or_file!r}{meant}: expected a preset name {presets()} or the path of a JSON "
            "config file (--list-configs describes the presets).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"Config file {str(path)!r} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise UserInputError(f"Config file {str(path)!r} must hold a JSON object of sections.")
    description = data.pop("description", None)  # one line for --list-configs; not inherited
    if description is not None and not isinstance(description, str):
        raise UserInputError(f"Invalid value for `description` in {str(path)!r}: expected a string (one line saying "
                             f"what the config is for). Received: description={description!r}")
    base = data.pop("base", "default")
    if base is not None and not isinstance(base, str):
        raise UserInputError(f"Invalid value for `base` in {str(path)!r}: expected a preset name, the path of a "
                             f"JSON config file, or null. Received: base={base!r}")
    if base == name_or_file or (base is not None and (PRESET_DIR / f"{base}.json") == path):
        raise UserInputError(f"Config file {str(path)!r} names itself as its base.")
    chain = (*_chain, (name_or_file, path.resolve()))
    return _replace(Config() if base is None else load_preset(base, chain), data, "", from_string=False)


def resolve(cfg: Config) -> Config:
    """The config with what depends on other keys filled in: `run.name` from the data, the
    sampler kind's and the backbone's options that are null from their defaults."""
    s = cfg.sampler
    fill = {k: v for k, v in options.SAMPLER_OPTIONS[s.kind].items() if getattr(s, k) is None}
    if fill:
        cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(s, **fill))
    if cfg.model.backbone in options.BACKBONE_OPTIONS:
        defaults = options.BACKBONE_OPTIONS[cfg.model.backbone]
        fill = {k: defaults[k] for k in BACKBONE_KEYS if k in defaults and getattr(cfg.model, k) is None}
        if fill:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **fill))
    if cfg.run.name is not None:
        return cfg
    d = cfg.data
    if d.source == "folder" and d.path:
        name = Path(d.path).resolve().name or "folder"
    elif d.source == "list" and d.path:
        name = dataset_name(d.path)
    elif d.source == "tfds" and d.tfds_name:
        name = d.tfds_name.split(":")[0].replace("/", "_")
    else:
        name = "fashion_mnist_small"
    # A name taken from the data is one folder name too (`folder_name_problem`): no hidden run.
    name = name.replace("\\", "_").lstrip(".") or "data"
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name))


def load(name_or_file: str = "default", overrides: Sequence[str] = (), resolved: bool = True) -> Config:
    """Preset + overrides, validated and (unless `resolved` is False) resolved.

    The train and tune commands take the config unresolved: what it leaves null (e.g. the P x K
    sampler's sizes) is then filled in from the data, not from fixed defaults.
    """
    cfg = apply_overrides(load_preset(name_or_file), overrides)
    validate(cfg)
    return resolve(cfg) if resolved else cfg
