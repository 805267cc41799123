"""Every choice a user makes about training, defined once.

Each :class:`Choice` has a name, a type, a default, a help text, whether it is basic (on the
widget's first panel) or advanced, and its valid values. The command line's ``train`` flags
(:func:`add_arguments`), the widget's training controls (``_qt/form.py``) and the loop benchmark's
rows (``benchmarks/loop.py``) are built from :data:`RECIPE`; a trained model's provenance stores the
values under ``"recipe"``. The defaults are the engine's (``TrainConfig``, ``DEFAULT_PRESET``,
``LIVE_STEPS``), whose values the loop benchmark chose. No napari, no Qt.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .engine import TrainConfig
from .engine.network.features import FILTER_BANKS
from .engine.network.spec import DEFAULT_PRESET, PRESETS
from .engine.training.optim import OPTIMIZERS
from .engine.training.train import LIVE_STEPS

__all__ = ["Choice", "RECIPE", "RecipeError", "choice", "defaults", "checked", "add_arguments",
           "from_arguments", "train_config"]


class RecipeError(ValueError):
    """A value outside what a choice allows; the message says which and why."""


@dataclass(frozen=True)
class Choice:
    """One user choice. ``kind`` is bool, int, float or str; ``default`` None means "automatic";
    ``flag`` is the command-line flag ("" = ``--name``; None = not on the command line)."""

    name: str
    kind: type
    default: Any
    help: str
    basic: bool = False
    choices: tuple = ()
    minimum: float | None = None
    #: the value must be above this (strictly), e.g. a learning rate above 0
    above: float | None = None
    flag: str | None = ""
    #: values beyond ``choices`` are accepted too (a spec for ``network``)
    free_text: bool = False

    @property
    def cli_flag(self) -> str | None:
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to the choice's type, or :class:`RecipeError`."""
        if value is None:
            if self.default is None:
                return None
            raise RecipeError(f"{self.name}: a value is needed")
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    if value.strip().lower() not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                        raise ValueError(value)
                    value = value.strip().lower() in ("true", "yes", "1", "on")
                value = bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                value = int(value)
            elif self.kind is float:
                value = float(value)
            else:
                value = str(value).strip()
        except (TypeError, ValueError):
            raise RecipeError(f"{self.name}: {value!r} is not {_kind_word(self.kind)}") from None
        if self.choices and value not in self.choices and not self.free_text:
            raise RecipeError(f"{self.name}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and not value >= self.minimum:
            raise RecipeError(f"{self.name}: {value!r} is below the minimum {self.minimum:g}")
        if self.above is not None and not value > self.above:
            raise RecipeError(f"{self.name}: {value!r} is below the minimum: it must be above {self.above:g}")
        return value


def _kind_word(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, "text")


RECIPE: tuple[Choice, ...] = (
    Choice("network", str, DEFAULT_PRESET, basic=True, choices=tuple(PRESETS), free_text=True, flag="--preset",
           help=f"the network: {DEFAULT_PRESET} (default; the best in the loop benchmark: a few strokes, seconds "
                "per round), wide (52x52 window, about twice the time per step, more accurate with many labels "
                "and minutes of training), wide2, steel or n3; or a spec such as 'C5x5x8, MPF2x2, C3x3x8, FC32'"),
    Choice("steps", int, TrainConfig.steps, minimum=1,
           help="training steps of Train (each covers the strokes of an image up to --step-size)"),
    Choice("live_steps", int, LIVE_STEPS, minimum=1, flag=None,
           help="steps of each live retraining after you paint (from the current weights)"),
    Choice("activation", str, "tanh", choices=("tanh", "relu"), help="activation of the hidden layers"),
    Choice("optimizer", str, TrainConfig.optimizer, choices=tuple(OPTIMIZERS),
           help="adam (default); sgd with the Armijo rule and L-BFGS are Masci et al.'s optimisers"),
    Choice("lr", float, None, above=0.0,
           help="learning rate; automatic: the optimiser's default, a third of it for nets with 3+ pooling "
                "stages, 0.3x that when a trained network continues"),
    Choice("augment", bool, TrainConfig.augment, flag="--no-augment",
           help="random rotations and flips of each step's crop"),
    Choice("balance", bool, TrainConfig.balance,
           help="the papers' class-balanced loss (every painted class weighs the same) instead of the mean over "
                "the painted pixels, a class painted in fewer strokes weighted up; it over-predicted the rarer class "
                "with few strokes (loop benchmark)"),
    Choice("step_size", int, TrainConfig.crop, minimum=16,
           help="each step trains on an N x N box around a painted pixel when the strokes spread wider; "
                f"{TrainConfig.crop} covers every stroke of a {TrainConfig.crop}x{TrainConfig.crop} image in every step"),
    Choice("filters", str, "none", choices=("none", *FILTER_BANKS),
           help="fixed input filters ahead of a new network: 'multiscale' adds each channel smoothed, its gradient "
                "magnitude (sigma 1-16) and its Hessian eigenvalues (sigma 1-8); slower to learn from few strokes, "
                "helped EM membranes after long training, hurt defect images"),
    Choice("seed", int, 0, minimum=0, help="seed of the weights and the augmentation"),
)

_BY_NAME = {c.name: c for c in RECIPE}


def choice(name: str) -> Choice:
    return _BY_NAME[name]


def defaults() -> dict[str, Any]:
    """Every choice's default."""
    return {c.name: c.default for c in RECIPE}


def checked(values: dict[str, Any]) -> dict[str, Any]:
    """The defaults updated with ``values``, each checked; unknown names are refused."""
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise RecipeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    out = defaults()
    out.update({k: _BY_NAME[k].check(v) for k, v in values.items()})
    return out


def add_arguments(parser, names: tuple[str, ...], types: dict | None = None, unset: tuple[str, ...] = ()) -> None:
    """Add the flags of the choices ``names`` to an argparse parser, with their help and default.
    ``types`` maps a name to an argparse type function (e.g. a positive-number check); the choices
    in ``unset`` default to None on the parser, so that the caller can tell "not given"."""
    types = types or {}
    for name in names:
        c = _BY_NAME[name]
        if c.cli_flag is None:
            raise ValueError(f"{name} has no command-line flag")
        if c.kind is bool:
            off = c.cli_flag.startswith("--no-")
            parser.add_argument(c.cli_flag, dest=c.name, action="store_false" if off else "store_true",
                                default=c.default, help=f"no {c.help}" if off else c.help)
            continue
        help_text = c.help if c.default is None else f"{c.help} (default {c.default})"
        kwargs: dict = dict(dest=c.name, default=None if name in unset else c.default,
                            type=types.get(c.name, c.kind), help=help_text, metavar=c.name.upper())
        if c.choices and not c.free_text:
            kwargs["choices"] = c.choices
        parser.add_argument(c.cli_flag, **kwargs)


def from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe values an argparse namespace holds (absent or None: the default)."""
    return checked({c.name: getattr(args, c.name) for c in RECIPE if getattr(args, c.name, None) is not None})


def train_config(values: dict[str, Any], **more) -> TrainConfig:
    """The engine's training configuration for recipe ``values`` (plus engine-only ``more``)."""
    v = checked(values)
    return TrainConfig(steps=v["steps"], optimizer=v["optimizer"], lr=v["lr"], augment=v["augment"],
                       balance=v["balance"], crop=v["step_size"], seed=v["seed"], **more)
