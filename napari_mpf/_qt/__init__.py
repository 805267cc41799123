"""napari widgets of napari-mpf (Qt); the engine they drive has no Qt."""

from .trainer_widget import TrainerWidget

__all__ = ["TrainerWidget"]
