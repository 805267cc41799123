"""Training data from many files: (image, labels) pairs, loaded one pair at a time.

A :class:`PairDataset` lists pairs of files (an image and its label mask, 0 = unpainted, 1..K =
classes); a file may hold a stack, whose slices become pairs of their own. Nothing is kept in memory
but the pair in use (and a small cache): :meth:`PairDataset.scan` reads the label masks once to
find the classes, the painted pairs and the channels, :meth:`PairDataset.normalisation` streams the
images once for the per-channel mean and standard deviation, and :meth:`PairDataset.pair` loads
pair ``i`` checked and ready for the engine. So a whole annotated data set can train a model
without fitting in memory: the :class:`~napari_mpf.engine.training.train.Trainer` takes one pair per step.

Pairs in a folder (:meth:`PairDataset.from_folder`):

- ``folder/images/NAME.ext`` with ``folder/labels/NAME.ext`` (any readable extensions; a label
  file may also be named ``NAME_labels``, ``NAME_mask`` or ``NAME.labels``), or
- in one folder, ``NAME.ext`` with ``NAME_labels.ext`` / ``NAME_mask.ext`` / ``NAME.labels.ext``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.read import FOLDER_EXTENSIONS, MAX_CLASSES, READ_EXTENSIONS, natural_key, read_labels
from ..io.volume import open_volume
from ..lru import LRUCache
from ..network.inputs import InputError, as_image, as_labels
from ..network.model import Model, normalisation_from
from .strokes import stroke_counts

__all__ = ["PairDataset", "DatasetInfo", "model_for_dataset"]

_LABEL_SUFFIXES = ("_labels", "_label", "_mask", "_masks", ".labels", "-labels")


@dataclass
class DatasetInfo:
    """What :meth:`PairDataset.scan` found: channels, classes present, painted pixels per pair."""

    in_channels: int
    classes: list[int]
    painted: np.ndarray  # painted pixels per pair
    shapes: list[tuple[int, int]] = field(default_factory=list)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per class 1.., all pairs
    class_strokes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (strokes.stroke_counts)

    @property
    def n_classes(self) -> int:
        return max(self.classes) if self.classes else 0

    @property
    def usable(self) -> list[int]:
        """Pairs with at least one painted pixel (the ones training draws from)."""
        return [int(i) for i in np.flatnonzero(self.painted)]


class PairDataset(Sequence):
    """(image, labels) pairs read lazily from files; ``dataset[i]`` / :meth:`pair` loads pair ``i``.

    ``images`` / ``labels``: one label file per image file. ``label_offset`` is added to every label
    pixel (1 for dense masks where 0 is a class too). ``cache``: pairs kept in memory.
    """

    def __init__(self, images: Sequence, labels: Sequence, *, image_key: str | None = None,
                 labels_key: str | None = None, label_offset: int = 0, channels_first: bool = False, cache: int = 2):
        images, labels = [Path(p) for p in images], [Path(p) for p in labels]
        if not images:
            raise InputError("no training images given")
        if len(images) != len(labels):
            raise InputError(f"{len(images)} image file(s) but {len(labels)} label file(s): give one label file per image file")
        self.image_files, self.label_files = images, labels
        self.image_key, self.labels_key = image_key, labels_key
        self.label_offset = int(label_offset)
        self.channels_first = channels_first
        self._cache: LRUCache[tuple[np.ndarray, np.ndarray]] = LRUCache(cache)
        self._info: DatasetInfo | None = None
        # index: pair -> (file, slice or None); opening a volume reads only its header
        self.index: list[tuple[int, int | None]] = []
        self.names: list[str] = []
        for f, path in enumerate(images):
            vol = open_volume(path, image_key, channels_first=channels_first)
            for z in range(vol.n_slices):
                self.index.append((f, z if vol.stack else None))
                self.names.append(vol.names[z])

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs) -> PairDataset:
        """Pairs found in ``folder`` (see the module docstring)."""
        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"training folder {root} does not exist or is not a folder")
        img_dir, lab_dir = root / "images", root / "labels"
        if img_dir.is_dir() and lab_dir.is_dir():
            images = _files(img_dir)
            by_stem = {_strip_label_suffix(p): p for p in _files(lab_dir)}
            pairs = []
            for img in images:
                lab = by_stem.get(_stem(img))
                if lab is None:
                    raise InputError(f"{img} has no label file in {lab_dir} (expected {_stem(img)}.<ext>)")
                pairs.append((img, lab))
        else:
            files = _files(root)
            labels = {_strip_label_suffix(p): p for p in files if _is_label_name(p)}
            pairs = [(p, labels[_stem(p)]) for p in files if not _is_label_name(p) and _stem(p) in labels]
            unpaired = [p.name for p in files if not _is_label_name(p) and _stem(p) not in labels]
            if unpaired and not pairs:
                raise InputError(
                    f"training folder {root}: no label files found for {', '.join(unpaired[:3])}; name them "
                    "NAME_labels.<ext> next to NAME.<ext>, or use images/ and labels/ subfolders"
                )
        if not pairs:
            raise InputError(f"training folder {root} holds no (image, labels) pairs")
        return cls([a for a, _ in pairs], [b for _, b in pairs], **kwargs)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.pair(i)

    # ------------------------------------------------------------------ loading
    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        f, z = self.index[i]
        vol = open_volume(self.image_files[f], self.image_key, channels_first=self.channels_first)
        image = vol.read(0 if z is None else z)
        name = self.names[i]
        image = as_image(image[0] if image.shape[0] == 1 else image, name=name)
        labs = read_labels(self.label_files[f], self.labels_key, None if z is None else [z], offset=self.label_offset,
                           max_label=MAX_CLASSES)
        if z is None and labs.stack:
            raise InputError(f"{self.label_files[f]} holds a stack but {self.image_files[f]} one image")
        labels = as_labels(labs.arrays[0], image.shape[1:], name=f"labels of {name}")
        return image.astype(np.float32, copy=False), labels

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``i``: a float32 ``(C, H, W)`` image and its int32 ``(H, W)`` labels (checked)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} of {len(self)}")
        i %= len(self)
        return self._cache.get_or_compute(i, lambda: self._load(i))

    def load_all(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """All pairs in memory, as the lists :class:`~napari_mpf.engine.training.train.Trainer` takes today."""
        pairs = [self._load(i) for i in range(len(self))]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # ------------------------------------------------------------------ streaming statistics
    def scan(self) -> DatasetInfo:
        """Read every pair once (one at a time): channels, classes, painted pixels and strokes;
        checks shapes."""
        if self._info is not None:
            return self._info
        channels = None
        present: set[int] = set()
        painted = np.zeros(len(self), np.int64)
        shapes = []
        pixels, strokes = np.zeros(MAX_CLASSES, np.int64), np.zeros(MAX_CLASSES, np.int64)  # per class 1..
        for i in range(len(self)):
            image, labels = self._load(i)
            if channels is None:
                channels = image.shape[0]
            elif image.shape[0] != channels:
                raise InputError(f"{self.names[i]} has {image.shape[0]} channel(s) but {self.names[0]} has {channels}")
            values = np.unique(labels)
            present.update(int(v) for v in values if v > 0)
            painted[i] = np.count_nonzero(labels)
            shapes.append(labels.shape)
            pair_pixels, pair_strokes = stroke_counts(labels, MAX_CLASSES)
            pixels += pair_pixels
            strokes += pair_strokes
        n = max(present, default=0)
        self._info = DatasetInfo(int(channels), sorted(present), painted, shapes, pixels[:n], strokes[:n])
        return self._info

    def check(self, in_channels: int | None = None, n_classes: int | None = None) -> DatasetInfo:
        """Like :func:`~napari_mpf.engine.network.inputs.check_training_pairs`, streaming: strokes of at least
        two classes, the model's channels, no class above ``n_classes``."""
        info = self.scan()
        if not info.classes:
            raise InputError("no strokes: the labels have no painted pixels (0 means unpainted); paint at least two classes")
        if len(info.classes) == 1:
            raise InputError(f"only one class is painted (class {info.classes[0]}); paint strokes of at least two classes")
        if in_channels is not None and info.in_channels != in_channels:
            raise InputError(f"the images have {info.in_channels} channel(s) but the model expects {in_channels}")
        if n_classes is not None and info.n_classes > n_classes:
            raise InputError(f"the labels use class {info.n_classes} but the model has {n_classes} classes")
        return info

    @property
    def usable(self) -> list[int]:
        return self.scan().usable

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation over all images, one image at a time (as
        :func:`~napari_mpf.engine.network.model.normalisation_from` computes them in memory)."""
        return normalisation_from(self.pair(i)[0] for i in range(len(self)))


def model_for_dataset(dataset: PairDataset, spec="fast", activation: str = "tanh", seed: int = 0,
                      class_names: Sequence[str] | None = None, filters: dict | str | None = None) -> Model:
    """A new network sized for ``dataset`` (channels, classes) with its normalisation, computed
    without loading the data set at once (the streaming :meth:`Model.for_data`)."""
    info = dataset.check()
    model = Model.create(spec, info.in_channels, max(info.n_classes, 2), activation, seed, class_names, filters=filters)
    model.norm_mean, model.norm_std = dataset.normalisation()
    model.fit_filter_statistics(dataset.pair(i)[0] for i in range(len(dataset)))
    return model


# ----------------------------------------------------------------------------- file names


def _files(folder: Path) -> list[Path]:
    exts = set(FOLDER_EXTENSIONS) | set(READ_EXTENSIONS)
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_file() and p.suffix.lower() in exts)]
    return sorted(files, key=natural_key)


def _stem(p: Path) -> str:
    return p.name[: -len(p.suffix)] if p.suffix else p.name


def _is_label_name(p: Path) -> bool:
    return any(_stem(p).lower().endswith(s) for s in _LABEL_SUFFIXES)


def _strip_label_suffix(p: Path) -> str:
    stem = _stem(p)
    for s in _LABEL_SUFFIXES:
        if stem.lower().endswith(s):
            return stem[: -len(s)]
    return stem
