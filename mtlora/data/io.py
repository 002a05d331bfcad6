"""File decoders shared by the data sets, and the errors they raise.

Every decoder takes a path and returns a numpy array in the "decoded sample" convention of
:mod:`mtlora.data.transforms` (``H x W`` leading, labels ``uint8`` with 255 = ignore).  Every
failure is re-raised as :class:`DataError` naming the file, so a broken file found in the
middle of an epoch says which file it is instead of surfacing as a bare PIL/scipy traceback.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps

__all__ = [
    "DataError",
    "DataRootNotFoundError",
    "db_info",
    "read_gray01",
    "read_ids",
    "read_label_png",
    "read_mat_variable",
    "read_normals_png",
    "read_npy",
    "read_rgb",
    "require_same_size",
]


class DataError(ValueError):
    """A data folder, split file or sample file is missing, unreadable or inconsistent."""


class DataRootNotFoundError(DataError, FileNotFoundError):
    """The data root (or its expected top-level layout) does not exist.

    Subclasses both :class:`DataError` and :class:`FileNotFoundError` so callers can catch
    either; the message always says where the data was expected and how to get it.
    """


@cache
def db_info(name: str) -> dict[str, Any]:
    """Load a class list shipped as package data (``mtlora/data/db_info/<name>.json``).

    Loaded through :mod:`importlib.resources`, never relative to the working directory (the
    official code opens ``./data/db_info`` and breaks when started from anywhere else).
    """
    text = resources.files("mtlora.data").joinpath("db_info", f"{name}.json").read_text()
    return json.loads(text)


def _fail(path: Path, what: str, err: BaseException | None = None) -> DataError:
    detail = f": {type(err).__name__}: {err}" if err is not None else ""
    return DataError(f"{path}: {what}{detail}")


def read_ids(path: Path) -> list[str]:
    """Read a split file (one sample id per line; blank lines ignored).

    UTF-8 with or without a byte-order mark (editors on Windows add one, which would otherwise
    become part of the first id and make its files "missing").
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as err:
        raise DataError(f"split file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(path, "cannot read split file", err) from err
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise DataError(f"split file {path} lists no sample ids")
    return ids


def _open_image(path: Path | BinaryIO, label: str | Path | None = None) -> Image.Image:
    path_or_file, path = path, label if label is not None else path
    try:
        image = Image.open(path_or_file)
        image.load()  # decode now: a truncated file fails here, not later
    except FileNotFoundError as err:
        raise DataError(f"{path}: file does not exist") from err
    except Image.DecompressionBombError as err:  # not an OSError: would escape skip_broken
        raise DataError(
            f"{path}: image too large to decode: {err} (a corrupt header, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in your script if the image is genuine)"
        ) from err
    except (OSError, ValueError, SyntaxError) as err:
        raise _fail(path, "cannot decode image", err) from err
    return image


def read_rgb(path: Path | BinaryIO, upright: bool = False, name: str | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, converting other pixel formats faithfully.

    Pillow's plain ``convert("RGB")`` clips wide formats at 255 (a 16-bit grey photo comes out
    almost white, a 0..1 float image black), so each kind is handled explicitly:

    * 8-bit RGB, grey, bilevel, palette, YCbCr: as stored (48-bit RGB keeps its high bytes);
    * 16-bit grey (and 32-bit integer grey within 0..65535): scaled by 255/65535;
    * float grey: values in 0..1 scaled by 255, anything else refused;
    * CMYK: through the embedded ICC profile when there is one, else Pillow's conversion;
    * with transparency (RGBA, LA, PA, palette with a transparent colour): composited over white;
    * any other mode: refused, naming the file and the mode.

    ``upright`` applies the EXIF orientation, as image viewers do (for photos to predict on;
    data sets with labels keep the stored pixel grid the labels were drawn on). ``path`` may be
    an open binary file (image bytes of a prepared data set); ``name`` then names it in errors.
    """
    label = name or (path if isinstance(path, (str, Path)) else "<image bytes>")
    with _open_image(path, label) as image:
        if upright:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image, Path(label))


def _to_rgb(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        if len(image.getbands()) != 1:
            raise DataError(f"{path}: unsupported image mode {mode!r}")
        values = np.asarray(image).astype(np.float64)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F":
            if not np.isfinite(values).all() or lo < 0 or hi > 1:
                raise DataError(
                    f"{path}: float image with values {lo:g}..{hi:g}; only float images in 0..1 can be read "
                    "(save it as 8- or 16-bit, or scale it to 0..1)"
                )
            grey = values * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise DataError(f"{path}: integer image with values {lo:g}..{hi:g} outside the 16-bit range")
            grey = values * (255.0 / 65535.0)
        return np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)
    if mode == "CMYK" and image.info.get("icc_profile"):
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            converted = ImageCms.profileToProfile(
                image, profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            return np.asarray(converted, dtype=np.uint8)
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to Pillow's conversion
    if mode.endswith(("A", "a")) or "transparency" in image.info:  # RGBA, LA, PA, RGBa, La
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"), dtype=np.uint8)
    if mode in ("L", "1", "P", "CMYK", "YCbCr", "HSV"):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise DataError(
        f"{path}: unsupported image mode {mode!r} (expected RGB, grey, palette, CMYK, 16-bit or float)"
    )


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG as ``(H, W)`` uint8 values, WITHOUT colour conversion.

    For palette ('P') PNGs (PASCAL ``semseg/VOC12``) the stored indices are the labels, so the
    palette must not be applied; 'L' images are plain 8-bit labels.  16-bit ('I;16'/'I')
    label images are accepted when every value fits in 0..255.
    """
    with _open_image(path) as image:
        mode = image.mode
        array = np.asarray(image)
    if mode in ("P", "L"):
        return array.astype(np.uint8, copy=False)
    if mode.startswith("I") and array.ndim == 2:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{path}: label values {array.min()}..{array.max()} do not fit in 0..255")
        return array.astype(np.uint8)
    raise DataError(
        f"{path}: expected a single-channel label PNG (palette 'P' or 8-bit 'L'), got mode {mode!r}"
    )


def read_gray01(path: Path) -> np.ndarray:
    """Read a grey-level PNG and return ``(H, W)`` float32 in [0, 1] (``v / 255``)."""
    with _open_image(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_normals_png(path: Path) -> np.ndarray:
    """Read an RGB-encoded normal map: ``n = 2 v / 255 - 1`` as ``(H, W, 3)`` float32."""
    with _open_image(path) as image:
        if image.mode not in ("RGB", "RGBA"):
            raise DataError(f"{path}: expected an RGB normal map, got mode {image.mode!r}")
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb * (2.0 / 255.0) - 1.0


def read_npy(path: Path, ndim: Iterable[int] = (2, 3)) -> np.ndarray:
    """Load a ``.npy`` array (no pickles) and check its number of dimensions."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file does not exist") from err
    except (OSError, ValueError, EOFError) as err:
        raise _fail(path, "cannot load .npy array", err) from err
    if array.ndim not in tuple(ndim):
        raise DataError(f"{path}: expected an array with {tuple(ndim)} dimensions, got shape {array.shape}")
    return array


def read_mat_variable(path: Path, name: str) -> np.ndarray:
    """Load one variable of a MATLAB file with :func:`scipy.io.loadmat` (records kept as is)."""
    import scipy.io  # deferred: scipy.io costs ~0.2 s to import and only .mat readers need it

    try:
        content = scipy.io.loadmat(path, variable_names=[name])
    except FileNotFoundError as err:
        raise DataError(f"{path}: file does not exist") from err
    except Exception as err:  # scipy raises ValueError/TypeError/MatReadError/... on corrupt files
        raise _fail(path, "cannot read MATLAB file", err) from err
    if name not in content:
        raise DataError(f"{path}: MATLAB file has no variable {name!r}")
    return content[name]


def require_same_size(array: np.ndarray, image_shape: tuple[int, ...], path: Path, image_path: Path) -> None:
    """Raise :class:`DataError` when a label's ``H x W`` differs from its image's."""
    if tuple(array.shape[:2]) != tuple(image_shape[:2]):
        raise DataError(
            f"{path}: label size {array.shape[0]}x{array.shape[1]} differs from the size "
            f"{image_shape[0]}x{image_shape[1]} of image {image_path}"
        )
