"""The widget's training controls are built from the Recipe: its defaults, help and valid values."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QCheckBox, QComboBox, QLineEdit, QSpinBox

from napari_mpf import recipe

#: recipe choice -> the widget's control
CONTROLS = {"network": "spec_combo", "steps": "steps_spin", "live_steps": "live_steps_spin",
            "activation": "activation_combo", "optimizer": "optimizer_combo", "lr": "lr_edit",
            "augment": "augment_check", "balance": "balance_check", "step_size": "step_size_spin",
            "filters": "filters_combo", "seed": "seed_spin"}


def _value(control):
    if isinstance(control, QCheckBox):
        return control.isChecked()
    if isinstance(control, QComboBox):
        return control.currentText()
    if isinstance(control, QSpinBox):
        return control.value()
    assert isinstance(control, QLineEdit)
    return control.text() or None


def test_every_recipe_choice_has_a_control():
    assert set(CONTROLS) == {c.name for c in recipe.RECIPE}


@pytest.fixture
def fresh_widget(make_napari_viewer, qtbot):
    """The widget as a user opens it (not set up for quick tests)."""
    from napari_mpf._qt.trainer_widget import TrainerWidget

    w = TrainerWidget(make_napari_viewer())
    yield w
    w.close_workers()


@pytest.mark.parametrize("choice", recipe.RECIPE, ids=lambda c: c.name)
def test_controls_start_at_the_recipe_default_with_its_help(fresh_widget, choice):
    control = getattr(fresh_widget, CONTROLS[choice.name])
    assert _value(control) == choice.default
    assert control.toolTip().lower() == choice.help.lower()
    if isinstance(control, QSpinBox) and choice.minimum is not None:
        assert control.minimum() == choice.minimum
    if isinstance(control, QComboBox) and not choice.free_text:
        assert [control.itemText(i) for i in range(control.count())][: len(choice.choices)] == list(choice.choices)


def test_the_settings_of_a_fresh_widget_are_the_recipe(fresh_widget):
    expected = {k: v for k, v in recipe.defaults().items() if k != "live_steps"}
    assert fresh_widget.settings().recipe() == expected
