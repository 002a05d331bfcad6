"""Prediction panels: input, each task's prediction and, when known, its ground truth.

Pure functions from tensors / numpy arrays to pictures, so notebooks and ``mtlora predict``
draw the same panels.  Nothing here selects a matplotlib backend or touches pyplot: colour
maps are read as lookup tables, panels are composed with Pillow, and plots use the
:class:`InlineFigure` object API.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from mtlora.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mtlora.tasks import IGNORE_INDEX, task_info
from mtlora.tasks import PART_CLASSES as PART_CLASSES  # re-exported: legend names
from mtlora.tasks import VOC_CLASSES as VOC_CLASSES


def class_names(task: str, num_classes: int) -> list[str]:
    """Legend names of a segmentation task's classes (its registry entry's, else ``class k``).

    Names of a task whose class count the data set decides (semseg) are only used when the
    count matches them (21 PASCAL VOC classes, not NYUD's 40).
    """
    spec = task_info(task)
    names = spec.class_names
    if names and (spec.channels is not None or num_classes == len(names)):
        return list(names[:num_classes])
    return [f"class {k}" for k in range(num_classes)]


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), ``(C, 3)`` uint8; 255 = ignore -> white."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        c, r, g, b = k, 0, 0, 0
        for shift in range(8):
            r |= ((c >> 0) & 1) << (7 - shift)
            g |= ((c >> 1) & 1) << (7 - shift)
            b |= ((c >> 2) & 1) << (7 - shift)
            c >>= 3
        colours[k] = (r, g, b)
    return colours


def denormalise(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` ImageNet-normalised tensor -> ``(H, W, 3)`` uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def decode_prediction(task: str, logits: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """Logits ``(C, H, W)`` -> a map to draw or save: class ids, probabilities, unit normals or depth.

    ``size`` first resizes the logits bilinearly to ``(height, width)`` (outputs at an image's
    original size); class ids are then found one channel at a time, so a large image never
    needs all its class scores at full size in memory at once.
    """
    kind = task_info(task).kind
    logits = logits.detach().float().cpu()
    if size is not None and tuple(size) != tuple(logits.shape[-2:]):

        def resized(x: Tensor) -> Tensor:
            return F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

        if kind == "segmentation":
            best, ids = resized(logits[:1])[0], torch.zeros(tuple(size), dtype=torch.int64)
            for k in range(1, logits.shape[0]):
                score = resized(logits[k : k + 1])[0]
                better = score > best
                best, ids = torch.where(better, score, best), torch.where(better, k, ids)
            return ids.numpy()
        logits = resized(logits)
    if kind == "segmentation":
        return logits.numpy().argmax(0)  # numpy's argmax over channels is several times faster here
    if kind == "binary":
        return torch.sigmoid(logits[0]).numpy()
    if kind == "normals":
        vectors = logits.numpy().transpose(1, 2, 0)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return logits[0].numpy()


def decode_target(task: str, target: Tensor) -> np.ndarray:
    """A batch-convention target (no batch dim) -> the same kind of map as the prediction."""
    target = target.detach().float().cpu()
    kind = task_info(task).kind
    if kind == "segmentation":
        return target.numpy().astype(np.int64)
    if kind == "normals":
        return target.permute(1, 2, 0).numpy()
    return target[0].numpy()


def colour_range(task: str, *values: np.ndarray) -> tuple[float, float]:
    """Value range of a colour scale shared by all ``values`` (prediction and ground truth).

    Depth spans the valid values of every map, so equal colours mean equal depth in the
    prediction and its ground truth; probabilities (and the unused scales of class ids and
    normals) span 0..1.
    """
    if task_info(task).kind != "depth":
        return 0.0, 1.0
    valid = [v[v != IGNORE_INDEX] for v in values]
    valid = [v[np.isfinite(v)] for v in valid if v.size]
    valid = [v for v in valid if v.size]
    if not valid:
        return 0.0, 1.0
    return float(min(v.min() for v in valid)), float(max(v.max() for v in valid))


@functools.cache
def _lut(name: str) -> np.ndarray:
    """A matplotlib colour map as a ``(256, 3)`` uint8 table (no pyplot, no backend)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _cmap_name(task: str) -> str:
    return "magma" if task_info(task).kind == "binary" else "viridis"


def render(
    task: str, value: np.ndarray, num_classes: int = 1, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """A decoded map -> ``(H, W, 3)`` uint8 picture (ignored pixels white).

    ``value_range`` fixes the colour scale of continuous maps (default: :func:`colour_range`
    of this map alone); pass the same range for a prediction and its ground truth.
    """
    kind = task_info(task).kind
    if kind == "segmentation":
        colours = np.full((IGNORE_INDEX + 1, 3), 255, dtype=np.uint8)  # ids >= 255: white
        colours[:IGNORE_INDEX] = palette(IGNORE_INDEX)
        return colours[np.clip(value, 0, IGNORE_INDEX)]
    if kind == "normals":
        invalid = (value == IGNORE_INDEX).all(-1)
        out = ((np.clip(value, -1, 1) + 1) * 127.5).astype(np.uint8)
        out[invalid] = 255
        return out
    invalid = (value == IGNORE_INDEX) | ~np.isfinite(value)
    lo, hi = value_range if value_range is not None else colour_range(task, value)
    scaled = np.clip((np.nan_to_num(value) - lo) / max(hi - lo, 1e-6), 0, 1)
    out = _lut(_cmap_name(task))[(scaled * 255).round().astype(np.intp)]
    out[invalid] = 255
    return out


# ------------------------------------------------------------------------------------------ panels
_FONT_SIZE = 11
_LINE = 15  # pixels per text line
_PAD = 4
_MIN_TILE, _MAX_TILE, _MIN_COLUMN = 160, 320, 150
_MAX_LEGEND_LINES = 6


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=_FONT_SIZE)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    """Draw one line, cut with an ellipsis to fit ``width`` pixels."""
    font = _font()
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def _bar_key(task: str, value_range: tuple[float, float], width: int) -> Image.Image:
    """A horizontal colour bar with its end values."""
    key = Image.new("RGB", (width, 2 * _LINE), "white")
    ramp = _lut(_cmap_name(task))[np.linspace(0, 255, width - 2 * _PAD).round().astype(np.intp)]
    key.paste(Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (8, *ramp.shape)))), (_PAD, 2))
    draw = ImageDraw.Draw(key)
    lo, hi = (f"{v:.3g}" for v in value_range)
    draw.text((_PAD, 11), lo, fill=(0, 0, 0), font=_font())
    draw.text((width - _PAD - draw.textlength(hi, font=_font()), 11), hi, fill=(0, 0, 0), font=_font())
    return key


def _legend_key(task: str, classes: list[int], num_classes: int, width: int) -> Image.Image:
    """Colour swatches with class names, as many lines as needed (at most a few)."""
    names, colours = class_names(task, num_classes), palette(max(num_classes, max(classes, default=0) + 1))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[list[tuple[int, str]]] = [[]]
    used = 0
    for k in classes:
        label = names[k] if k < len(names) else f"class {k}"
        size = 12 + int(probe.textlength(label, font=_font())) + 8
        if lines[-1] and used + size > width - 2 * _PAD:
            lines.append([])
            used = 0
        lines[-1].append((k, label))
        used += size
    if len(lines) > _MAX_LEGEND_LINES:
        hidden = sum(len(line) for line in lines[_MAX_LEGEND_LINES - 1 :])
        lines = lines[: _MAX_LEGEND_LINES - 1] + [[(-1, f"+{hidden} more")]]
    key = Image.new("RGB", (width, len(lines) * _LINE), "white")
    draw = ImageDraw.Draw(key)
    for row, line in enumerate(lines):
        x, y = _PAD, row * _LINE
        for k, label in line:
            if k >= 0:
                draw.rectangle(
                    (x, y + 3, x + 9, y + 12), fill=tuple(int(c) for c in colours[k]), outline=(0, 0, 0)
                )
                x += 12
            draw.text((x, y), label, fill=(0, 0, 0), font=_font())
            x += int(draw.textlength(label, font=_font())) + 8
    return key


def _key(task: str, shown: list[np.ndarray], num_classes: int, value_range: tuple[float, float], width: int):
    kind = task_info(task).kind
    if kind == "segmentation":
        counts = sum(np.bincount(v.ravel(), minlength=IGNORE_INDEX + 1)[:IGNORE_INDEX] for v in shown)
        present = np.flatnonzero(counts).tolist()
        return _legend_key(task, present, num_classes, width)
    if kind == "normals":
        key = Image.new("RGB", (width, _LINE), "white")
        ImageDraw.Draw(key).text((_PAD, 0), "R,G,B = x,y,z", fill=(0, 0, 0), font=_font())
        return key
    return _bar_key(task, value_range, width)


def prediction_panel(
    image: Tensor,
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    title: str = "",
) -> Image.Image:
    """The input, then one column per task: prediction on top, ground truth (when given) below.

    Drawn with numpy and Pillow: a few milliseconds per panel instead of the ~1 s of a
    matplotlib figure, and no plotting state is touched.  Every tile carries its key (class
    legend, or colour bar with end values; a prediction and its ground truth share one colour
    scale).  The returned ``PIL.Image`` shows inline in Jupyter and saves with ``.save()``.
    """
    tasks = list(predictions)
    rows = 2 if targets else 1
    height, width = image.shape[-2:]
    scale = min(max(height, _MIN_TILE), _MAX_TILE) / height
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    column = max(tile[0], _MIN_COLUMN) + 2 * _PAD
    # cells[row][col] = (caption, picture, key)
    cells: list[list[tuple[str, np.ndarray, Image.Image] | None]] = [
        [None] * (len(tasks) + 1) for _ in range(rows)
    ]
    cells[0][0] = ("input", denormalise(image), None)
    for col, task in enumerate(tasks, start=1):
        logits = predictions[task]
        n = logits.shape[0]
        maps = [decode_prediction(task, logits)]
        if targets and task in targets:
            maps.append(decode_target(task, targets[task]))
        value_range = colour_range(task, *maps)
        key = _key(task, maps, n, value_range, column - 2 * _PAD)
        for row, (value, what) in enumerate(zip(maps, ("pred", "gt"))):
            cells[row][col] = (f"{task} ({what})", render(task, value, n, value_range), key)
    header = _LINE + _PAD if title else 0
    row_heights = [
        _LINE + tile[1] + _PAD + max((c[2].height for c in row if c and c[2]), default=0) + _PAD
        for row in cells
    ]
    panel = Image.new("RGB", (column * len(cells[0]), header + sum(row_heights)), "white")
    draw = ImageDraw.Draw(panel)
    if title:
        _text(draw, (_PAD, _PAD // 2), title, panel.width - 2 * _PAD)
    y = header
    for row, cells_of_row in enumerate(cells):
        for col, cell in enumerate(cells_of_row):
            if cell is None:
                continue
            caption, picture, key = cell
            x = col * column + _PAD
            _text(draw, (x, y), caption, column - 2 * _PAD)
            resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
            panel.paste(Image.fromarray(picture).resize(tile, resample), (x, y + _LINE))
            if key is not None:
                panel.paste(key, (x, y + _LINE + tile[1] + _PAD))
        y += row_heights[row]
    return panel


def save_panel(
    path: str | Path,
    image: Tensor,
    predictions: Mapping[str, Tensor],
    targets: Mapping[str, Tensor] | None = None,
    title: str = "",
) -> None:
    """Write :func:`prediction_panel` as a PNG (atomically: no half-written file on a crash)."""
    from mtlora.io.atomic import write_atomic

    panel = prediction_panel(image, predictions, targets, title)
    write_atomic(Path(path), lambda tmp: panel.save(tmp, format="PNG", compress_level=1))


class InlineFigure(Figure):
    """A matplotlib figure made without pyplot that Jupyter still shows inline.

    Library plots are drawn with the object API so they never switch the process's backend
    (which would turn a notebook's inline display off); a bare ``Figure`` has no rich display
    of its own, so this one provides ``_repr_png_``.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
