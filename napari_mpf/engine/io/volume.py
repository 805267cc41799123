"""Lazy volumes: a file, zarr store, folder of images or array read region by region, so a
volume may be far larger than memory (the layout rules of :mod:`.read`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..lru import LRUCache
from ..network.inputs import InputError
from .ngff import NgffInfo
from .read import (
    FOLDER_EXTENSIONS,
    IMAGEIO_EXTENSIONS,
    READ_EXTENSIONS,
    check_path,
    folder_files,
    is_zarr,
    open_zarr,
    read_array,
)
from .selection import parse_crop, parse_slices, select_indices

__all__ = ["Volume", "ArrayVolume", "FileVolume", "FolderVolume", "open_volume"]

# ----------------------------------------------------------------------------- volumes (lazy, region by region)


def _layout(shape: tuple[int, ...], channels_first: bool, name: str, single_image: bool = False) -> tuple[bool, str | None]:
    """``(stack, channel axis)`` of an array shape, by the rules of :func:`read_images`.

    The channel axis is ``None`` (grayscale), ``"first"`` (``(C, H, W)`` / ``(Z, C, H, W)``) or
    ``"last"`` (``(H, W, C)`` / ``(Z, H, W, C)``).
    """
    nd = len(shape)
    rgb_last = nd >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4
    if nd == 3 and single_image and not channels_first:
        rgb_last = True
    if nd == 2:
        return False, None
    if nd == 3:
        if channels_first:
            return False, "first"
        return (False, "last") if rgb_last else (True, None)
    if nd == 4:
        if channels_first:
            return True, "first"
        if rgb_last:
            return True, "last"
        raise InputError(
            f"{name}: a 4-D array of shape {shape} is ambiguous; store a stack of colour images "
            "as (Z, H, W, 3|4), or as (Z, C, H, W) and pass --channels-first"
        )
    raise InputError(f"{name}: expected a 2-D image, an RGB image (H, W, 3|4) or a stack (Z, H, W); got shape {shape}")


class Volume:
    """A stack of 2-D images (``n_slices`` x ``channels`` x ``height`` x ``width``) read region by region.

    Nothing is read until :meth:`read` asks for a region, so a volume may be far larger than memory.
    ``stack`` says whether the source was a stack (outputs keep a leading axis); ``names`` gives a
    short name per slice for messages and tables. A volume pickles without its open file handles, so
    it can be sent to dask workers. Subclasses implement :meth:`_plane`.
    """

    def __init__(self, name: str, raw_shape: tuple[int, ...], dtype, stack: bool, channel_axis: str | None,
                 slices=None, crop=None, names: list[str] | None = None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.stack = bool(stack)
        self.channel_axis = channel_axis
        shape = list(raw_shape)
        n_raw = shape.pop(0) if stack else 1
        if channel_axis == "first":
            self.channels = shape.pop(0)
        elif channel_axis == "last":
            self.channels = shape.pop()
        else:
            self.channels = 1
        h, w = shape
        sel = parse_slices(slices) if isinstance(slices, str) else slices
        if not stack and sel is not None:
            raise InputError(f"--slices selects images of a stack, but {name} holds one image of shape {tuple(raw_shape)}")
        self.indices = select_indices(n_raw, sel, name) if stack else [0]
        crop_ = parse_crop(crop) if isinstance(crop, str) else crop
        if crop_ is None:
            self.origin = (0, 0)
            self.height, self.width = h, w
        else:
            bounds = []
            for axis, sl, n in (("rows", crop_[0], h), ("columns", crop_[1], w)):
                start = 0 if sl.start is None else sl.start
                stop = n if sl.stop is None else sl.stop
                if stop > n or start >= stop:
                    raise InputError(f"--crop {axis} {start}:{stop} do not fit {name}, whose images are {h}x{w} (rows x columns)")
                bounds.append((start, stop))
            self.origin = (bounds[0][0], bounds[1][0])
            self.height, self.width = bounds[0][1] - bounds[0][0], bounds[1][1] - bounds[1][0]
        if names is not None:
            self.names = [names[i] for i in self.indices]
        else:
            self.names = [f"{name}[{i}]" for i in self.indices] if stack else [name]

    @property
    def n_slices(self) -> int:
        return len(self.indices)

    @property
    def source_id(self) -> str:
        """What the volume reads (an absolute path for files), to recognise the same input again."""
        path = getattr(self, "path", None)
        if path is None:
            return self.name
        key, level = getattr(self, "key", None), getattr(self, "level", None)
        return f"{path}:{key}" if key else f"{path}@level{level}" if level else str(path)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(Z, C, H, W)``."""
        return self.n_slices, self.channels, self.height, self.width

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.n_slices

    def read(self, z: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Pixels ``(C, h, w)`` (file dtype) of slice ``z`` (0-based in the selection), rows and columns
        relative to the crop."""
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        oy, ox = self.origin
        plane = self._plane(self.indices[z], slice(oy + r0, oy + r1), slice(ox + c0, ox + c1))
        plane = np.asarray(plane)
        if self.channel_axis == "last":
            plane = np.moveaxis(plane, -1, 0)
        elif self.channel_axis is None:
            plane = plane[None]
        if plane.dtype == bool:
            plane = plane.astype(np.uint8)
        return plane

    def _plane(self, zi: int, rows: slice, cols: slice) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _index(self, zi: int, rows: slice, cols: slice) -> tuple:
        """Index of a region into an array laid out like the source."""
        idx: tuple = (zi,) if self.stack else ()
        if self.channel_axis == "first":
            idx += (slice(None),)
        return (*idx, rows, cols)

    def __repr__(self) -> str:
        z, c, h, w = self.shape
        return f"{type(self).__name__}({self.name!r}, {z} slice(s) of {h}x{w}, {c} channel(s), {self.dtype})"


class ArrayVolume(Volume):
    """A volume over an array already open in this process: NumPy, zarr, dask or any array that slices.

    ``rgb``: the last axis holds colour channels (napari's RGB layers); otherwise a 3-D array is a
    stack of grayscale images. ``ngff``: the physical scale an OME-Zarr output keeps. (Not for sending to another process: the array goes with it.)
    """

    def __init__(self, array, rgb: bool = False, name: str = "array", slices=None, crop=None, ngff: NgffInfo | None = None):
        self.array = array
        #: the geometry an OME-Zarr output keeps (e.g. from a napari layer's scale), or None
        self.ngff = ngff
        shape = tuple(array.shape)
        nd = len(shape) - (1 if rgb else 0)
        if nd not in (2, 3):
            raise InputError(f"{name}: expected (H, W) or (Z, H, W) (with a colour axis last if RGB), got shape {shape}")
        super().__init__(name, shape, array.dtype, nd == 3, "last" if rgb else None, slices, crop)

    def _plane(self, zi, rows, cols):
        region = self.array[self._index(zi, rows, cols)]
        if hasattr(region, "compute"):  # dask: compute this region here, without nesting schedulers
            region = region.compute(scheduler="sync")
        return np.asarray(region)


#: the last few whole planes decoded in this process (formats that cannot read a region)
_PLANES: LRUCache[np.ndarray] = LRUCache(2)


class FileVolume(Volume):
    """A volume over one file or zarr store, opened lazily in each process that reads it.

    ``.npy`` and uncompressed TIFF are memory-mapped; zarr, and compressed TIFF through tifffile's
    zarr view, decode only the chunks (strips, tiles) a region touches; ``.npz``, PNG and JPEG are
    read once, whole.
    """

    def __init__(self, path, key=None, slices=None, crop=None, channels_first=False, role="image", level=None):
        p = Path(path)
        self.path, self.key, self.role, self.level = p.resolve(), key, role, level
        self._given = p  # names in messages keep the path as given; workers open the absolute path
        self._handle = None
        self._kind, raw_shape, dtype, name = self._probe(key, role)
        #: the OME-Zarr metadata the outputs keep (scale, translation, units), None for other inputs
        self.ngff = getattr(self._handle, "ngff", None)
        channels_first = getattr(self._handle, "channels_first", channels_first)  # NGFF: from its axes
        stack, caxis = _layout(raw_shape, channels_first, name, single_image=p.suffix.lower() in IMAGEIO_EXTENSIONS)
        super().__init__(name, raw_shape, dtype, stack, caxis, slices, crop)

    def _probe(self, key, role):
        p = self._given
        if is_zarr(p):
            arr, name = open_zarr(p, key, "images" if role == "image" else "labels", role, self.level)
            self._handle = arr
            return "zarr", tuple(arr.shape), arr.dtype, name
        if self.level is not None:
            raise InputError(f"{role} {p}: --level applies to OME-Zarr images only")
        ext = p.suffix.lower()
        if ext in (".tif", ".tiff") and key is None:
            check_path(p, role)
            import tifffile

            try:
                mm = tifffile.memmap(p, mode="r")
                self._handle = mm
                return "tiff-memmap", tuple(mm.shape), mm.dtype, str(p)
            except Exception:  # noqa: BLE001 - compressed or not contiguous: read page by page
                pass
            try:  # compressed: tifffile's zarr view decodes only the strips/tiles a region touches
                arr = self._tiff_zarr(p)
            except Exception as exc:  # noqa: BLE001 - tifffile raises its own types
                raise InputError(f"{role} file {p} could not be read as tif: {type(exc).__name__}: {exc}") from None
            if arr.dtype.kind in "biuf" and arr.size:
                self._handle = arr
                return "tiff-zarr", tuple(arr.shape), arr.dtype, str(p)
        if ext == ".npy" and key is None:
            check_path(p, role)
            try:
                mm = np.load(p, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"{role} file {p} could not be read as npy: {exc}") from None
            if mm.dtype.kind in "biuf" and mm.size:
                self._handle = mm
                return "npy", tuple(mm.shape), mm.dtype, str(p)
        arr, name = read_array(p, key, default_key="images" if role == "image" else "labels", role=role)
        self._handle = arr
        return "memory", tuple(arr.shape), arr.dtype, name

    @staticmethod
    def _tiff_zarr(path):
        import tifffile
        import zarr

        return zarr.open(tifffile.imread(path, aszarr=True), mode="r")

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._kind != "memory":
            state["_handle"] = None
        return state

    def _open(self):
        if self._handle is None:
            if self._kind == "zarr":
                self._handle, _ = open_zarr(self.path, self.key, "images" if self.role == "image" else "labels", self.role,
                                            self.level)
            elif self._kind == "tiff-memmap":
                import tifffile

                self._handle = tifffile.memmap(self.path, mode="r")
            elif self._kind == "tiff-zarr":
                self._handle = self._tiff_zarr(self.path)
            elif self._kind == "npy":
                self._handle = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._handle

    def _plane(self, zi, rows, cols):
        return np.asarray(self._open()[self._index(zi, rows, cols)])


class FolderVolume(Volume):
    """A folder of images as a stack: slice ``z`` is the ``z``-th file in natural order."""

    def __init__(self, path, slices=None, crop=None, channels_first=False, role="image"):
        p = Path(path)
        self.path, self.role = p.resolve(), role
        self.files = folder_files(self.path)
        if not self.files:
            raise InputError(f"{role} folder {p} holds no images (" + ", ".join(FOLDER_EXTENSIONS) + ")")
        first, _ = read_array(self.files[0], role=role)
        self.plane_shape = first.shape
        _, caxis = _layout(first.shape, channels_first, str(self.files[0]), single_image=self.files[0].suffix.lower() in IMAGEIO_EXTENSIONS)
        raw_shape = (len(self.files), *first.shape)
        super().__init__(str(p), raw_shape, first.dtype, True, caxis, slices, crop, names=[f.name for f in self.files])

    def _plane(self, zi, rows, cols):
        f = self.files[zi]

        def load():
            arr, _ = read_array(f, role=self.role)
            if arr.shape != self.plane_shape:
                raise InputError(
                    f"{self.role} folder {self.path}: {f.name} has shape {arr.shape} but {self.files[0].name} has "
                    f"{self.plane_shape}; all images of a folder must have the same shape"
                )
            return arr

        plane = _PLANES.get_or_compute((str(f), 0), load)
        return plane[self._index(zi, rows, cols)[1:]]


def open_volume(
    path: str | os.PathLike,
    key: str | None = None,
    slices: str | slice | list[int] | None = None,
    *,
    crop: str | tuple[slice, slice] | None = None,
    channels_first: bool = False,
    role: str = "image",
    level: int | None = None,
) -> Volume:
    """Open a file, zarr store or folder of images as a lazy :class:`Volume` (same layout rules,
    ``slices``, ``crop`` and OME-Zarr ``level`` as :func:`read_images`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} file {p} does not exist")
    if p.is_dir() and not is_zarr(p):
        if p.suffix.lower() in READ_EXTENSIONS:
            raise InputError(f"{role} file {p} is a directory, not a file")
        if key is not None or level is not None:
            what = f"a key ('{key}')" if key is not None else "--level"
            raise InputError(f"{role} folder {p}: {what} only applies to .npz files and zarr stores")
        return FolderVolume(p, slices, crop, channels_first, role)
    return FileVolume(p, key, slices, crop, channels_first, role, level)
