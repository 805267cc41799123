"""The Recipe defines every training choice once; the CLI and the loop benchmark follow it (the
widget's side is tests/_qt/test_recipe_widget.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from napari_mpf import recipe
from napari_mpf.cli import build_parser
from napari_mpf.engine import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loop  # noqa: E402


def _train_action(flag: str):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return next(a for a in train._actions if flag in a.option_strings)


@pytest.mark.parametrize("choice", [c for c in recipe.RECIPE if c.cli_flag], ids=lambda c: c.name)
def test_every_cli_flag_of_the_recipe_has_its_help_and_default(choice):
    action = _train_action(choice.cli_flag)
    assert choice.help in action.help
    assert action.dest == ("preset" if choice.name == "network" else choice.name)  # --preset or --spec
    assert action.default in (choice.default, None)  # None: "not given", which means the default
    if choice.choices and not choice.free_text:
        assert tuple(action.choices) == choice.choices


def test_parsed_defaults_are_the_recipe_and_flags_change_it():
    args = build_parser().parse_args(["train", "--image", "a.tif", "--labels", "b.tif", "--out", "m.mpf.npz"])
    assert recipe.from_arguments(args) == recipe.defaults()
    args = build_parser().parse_args(["train", "--image", "a.tif", "--labels", "b.tif", "--out", "m.mpf.npz",
                                      "--no-augment", "--balance", "--steps", "7", "--step-size", "128"])
    values = recipe.from_arguments(args)
    assert (values["augment"], values["balance"], values["steps"], values["step_size"]) == (False, True, 7, 128)


def test_recipe_defaults_are_the_engines():
    d = recipe.defaults()
    assert (d["steps"], d["optimizer"], d["augment"], d["balance"], d["step_size"]) == (
        TrainConfig.steps, TrainConfig.optimizer, TrainConfig.augment, TrainConfig.balance, TrainConfig.crop)
    cfg = recipe.train_config({"steps": 3, "balance": True})
    assert (cfg.steps, cfg.balance, cfg.crop) == (3, True, TrainConfig.crop)


def test_the_loop_benchmark_starts_from_the_recipe():
    d = recipe.defaults()
    for name, key in loop.RECIPE_KEYS.items():
        assert loop.OURS[key] == d[name], name
    args = loop.build_parser().parse_args([])
    assert (args.first_steps, args.round_steps) == (d["steps"], d["live_steps"])


@pytest.mark.parametrize(("values", "words"), [
    ({"steps": 0}, "below the minimum"),
    ({"steps": "many"}, "not a whole number"),
    ({"optimizer": "rmsprop"}, "not one of adam"),
    ({"augment": "perhaps"}, "not true or false"),
    ({"lr": -1.0}, "below the minimum"),
    ({"colour": "red"}, "unknown setting(s) colour"),
])
def test_bad_values_are_refused_with_the_reason(values, words):
    with pytest.raises(recipe.RecipeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        recipe.checked(values)


def test_a_spec_is_a_valid_network():
    assert recipe.checked({"network": "C3x3x4, MPF2x2, FC8"})["network"] == "C3x3x4, MPF2x2, FC8"
