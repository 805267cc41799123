"""A combo box of the viewer's layers of one type, kept in sync with the layer list."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QWidget

__all__ = ["LayerCombo"]


class LayerCombo(QComboBox):
    """Lists ``viewer.layers`` of ``layer_type`` that pass ``accept``; keeps the chosen layer.

    ``layer()`` is the chosen layer (or None); ``layer_changed`` is emitted with it.
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer,
        layer_type: type,
        accept: Callable[[object], bool] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        # long layer names must not widen the dock beyond the window
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(8)
        self.viewer = viewer
        self.layer_type = layer_type
        self.accept = accept or (lambda layer: True)
        self._layers: list = []
        self._refreshing = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        self.currentIndexChanged.connect(self._emit)
        self.refresh()

    def candidates(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, self.layer_type) and self.accept(ly)]

    def layer(self):
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_layer(self, layer) -> None:
        self.refresh()
        for i, ly in enumerate(self._layers):
            if ly is layer:
                self.setCurrentIndex(i)
                return

    def refresh(self, event=None) -> None:
        """Rebuild the list, keeping the current layer if it is still there."""
        current = self.layer()
        layers = self.candidates()
        for ly in layers:
            try:
                ly.events.name.disconnect(self._on_rename)
            except (TypeError, ValueError, RuntimeError):
                pass
            ly.events.name.connect(self._on_rename)
        self._refreshing = True
        try:
            self._layers = layers
            self.clear()
            self.addItems([ly.name for ly in layers])
            index = next((i for i, ly in enumerate(layers) if ly is current), 0 if layers else -1)
            self.setCurrentIndex(index)
        finally:
            self._refreshing = False
        if self.layer() is not current:
            self.layer_changed.emit(self.layer())

    def _on_rename(self, event=None) -> None:
        for i, ly in enumerate(self._layers):
            if i < self.count() and self.itemText(i) != ly.name:
                self.setItemText(i, ly.name)

    def _emit(self, index: int) -> None:
        if not self._refreshing:
            self.layer_changed.emit(self.layer())
