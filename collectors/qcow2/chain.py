"""The one backing-chain walker: usage, measure, info and check all follow chains through it.

Names resolve as qemu resolves them (relative to the directory of the image that names them);
pseudo-protocol names (``json:``, ``nbd:``, ...) are reported, never opened; a loop, a chain
deeper than the one limit, and a missing, unreadable or non-qcow2 layer each end the walk with
their own status, the failures with an error attached here. Every layer is opened through the
one read-only reader.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Optional

from ..common.errors import INVALID, IO_ERROR, Qcow2Error, internal_error
from ..common.text import printable
from ..report.model import (
    DEFAULT_MAX_DEPTH,
    LAYER_ERROR,
    LAYER_INVALID_NAME,
    LAYER_LOOP,
    LAYER_MISSING,
    LAYER_NOT_QCOW2,
    LAYER_OK,
    LAYER_OTHER_FORMAT,
    LAYER_PROTOCOL,
    LAYER_TOO_DEEP,
    ChainLayer,
)
from .image import Qcow2Image
from .names import path_problem
from .reader import has_qcow2_magic

# One step of a walk: the layer as reported, and (ok qcow2 layers only) the image, open until
# the consumer asks for the next step.
Step = tuple[ChainLayer, Optional[Qcow2Image]]

def has_protocol(name: str) -> bool:
    """qemu's path_has_protocol(): a ':' before any '/' (json:, nbd:, file:, ...)."""
    for char in name:
        if char == "/":
            return False
        if char == ":":
            return True
    return False


def backing_path(image_path: str, name: str) -> str:
    """qemu's path_combine(): relative names are relative to the directory of the image that
    names them, never to the working directory."""
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(image_path), name)


def _chain_error(message: str, kind: str, path: str) -> Qcow2Error:
    return Qcow2Error(message, structure="backing chain", kind=kind, filename=path)


def _open_layer(depth: int, name: str, path: str, fmt: Optional[str]) -> Step:
    """Open one existing layer: a qcow2 image, a not-qcow2 layer, or the reason it failed."""
    try:
        if fmt not in (None, "qcow2") or (fmt is None and not has_qcow2_magic(path)):
            # Declared as another format, or undeclared and not qcow2 (qemu probes it: raw):
            # present, reported, not analysed.
            return ChainLayer(depth, name, path, LAYER_OTHER_FORMAT, fmt or "raw"), None
        if not has_qcow2_magic(path):
            # Declared qcow2 but is not: qemu refuses to open the chain.
            error = _chain_error(f"backing file {name!r} is not a qcow2 image", INVALID, path)
            return ChainLayer(depth, name, path, LAYER_NOT_QCOW2, fmt, error=error), None
        image = Qcow2Image.open(path)
    except OSError as exc:
        error = Qcow2Error(exc.strerror or str(exc), structure="backing file", kind=IO_ERROR,
                           filename=path)
        return ChainLayer(depth, name, path, LAYER_ERROR, fmt, error=error), None
    except Qcow2Error as exc:
        return ChainLayer(depth, name, path, LAYER_ERROR, fmt,
                          error=exc.with_filename(path)), None
    except Exception as exc:  # last resort: one layer never stops the others
        return ChainLayer(depth, name, path, LAYER_ERROR, fmt,
                          error=internal_error(exc, path)), None
    return ChainLayer(depth, name, path, LAYER_OK, fmt), image


def _next_layer(depth: int, name: str, fmt: Optional[str], above: str, seen: set[str],
                max_depth: int) -> Step:
    """The layer `name` (written in the image at `above`) as a step of the walk."""
    if depth > max_depth:
        error = _chain_error(f"backing chain deeper than the limit at {name!r}", INVALID, name)
        return ChainLayer(depth, name, None, LAYER_TOO_DEEP, fmt, error=error), None
    problem = path_problem(name)
    if problem is not None:
        error = _chain_error(f"backing file name '{printable(name)}' {problem}", INVALID, above)
        return ChainLayer(depth, name, None, LAYER_INVALID_NAME, fmt, error=error), None
    if has_protocol(name):
        return ChainLayer(depth, name, None, LAYER_PROTOCOL, fmt), None
    path = backing_path(above, name)
    real = os.path.realpath(path)
    if real in seen:
        error = _chain_error(f"backing file {name!r} loops back into the chain", INVALID, path)
        return ChainLayer(depth, name, path, LAYER_LOOP, fmt, error=error), None
    seen.add(real)
    if not os.path.exists(path):
        error = _chain_error(f"backing file {name!r} not found", IO_ERROR, path)
        return ChainLayer(depth, name, path, LAYER_MISSING, fmt, error=error), None
    return _open_layer(depth, name, path, fmt)


def backing_layers(image: Qcow2Image, path: str, *,
                   max_depth: int = DEFAULT_MAX_DEPTH) -> Generator[Step, None, None]:
    """Every backing layer below the open image at `path`, depth 1 first. Each ok layer's image
    stays open until the next step is asked for; the walk ends at the first layer that is not
    an ok qcow2 image."""
    seen = {os.path.realpath(path)}
    name, fmt, above = image.backing_filename, image.backing_format, path
    depth = 0
    while name is not None:
        depth += 1
        layer, opened = _next_layer(depth, name, fmt, above, seen, max_depth)
        if opened is None:
            yield layer, None
            return
        with opened:
            yield layer, opened
            name, fmt, above = opened.backing_filename, opened.backing_format, layer.path or ""


def walk(path: str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Generator[Step, None, None]:
    """The image at `path` (depth 0: status ok, or error) and then every backing layer."""
    try:
        image = Qcow2Image.open(path)
    except Qcow2Error as exc:
        yield ChainLayer(0, path, path, LAYER_ERROR, None, error=exc.with_filename(path)), None
        return
    except Exception as exc:  # last resort, as for the layers
        error = internal_error(exc, path)
        yield ChainLayer(0, path, path, LAYER_ERROR, None, error=error), None
        return
    with image:
        yield ChainLayer(0, path, path, LAYER_OK, "qcow2"), image
        yield from backing_layers(image, path, max_depth=max_depth)

