"""The one backing-chain walker, and :func:`visit`, the one way usage, info, check and measure
walk a chain: each layer with its status, read while it is open.

Names resolve as qemu resolves them (relative to the directory of the image that names them);
pseudo-protocol names (``json:``, ``nbd:``, ...) are reported, never opened; a loop, a chain
deeper than the one limit, and a missing, unreadable or non-qcow2 layer each end the walk with
their own status, the failures with an error attached here. Every layer is opened through the
one read-only reader.
"""

from __future__ import annotations

import os

from ..common.errors import INVALID, IO_ERROR, UNSUPPORTED, Qcow2Error
from ..common.record import Generic, TypeVar, frozen_record, replace
from ..common.text import printable
from ..report.model import DEFAULT_MAX_DEPTH, ChainLayer, LayerStatus
from .image import Qcow2Image
from .names import path_problem
from .reader import has_qcow2_magic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Callable, Optional, TypeAlias

# One step of a walk: the layer as reported, and (ok qcow2 layers only) the image, open until
# the consumer asks for the next step.
Step: TypeAlias = "tuple[ChainLayer, Optional[Qcow2Image]]"

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
            return ChainLayer(depth, name, path, LayerStatus.OTHER_FORMAT, fmt or "raw"), None
        if not has_qcow2_magic(path):
            # Declared qcow2 but is not: qemu refuses to open the chain.
            error = _chain_error(f"backing file '{printable(name)}' is not a qcow2 image",
                                 INVALID, path)
            return ChainLayer(depth, name, path, LayerStatus.NOT_QCOW2, fmt, error=error), None
        image = Qcow2Image.open(path)
    except OSError as exc:
        error = Qcow2Error(exc.strerror or str(exc), structure="backing file", kind=IO_ERROR,
                           filename=path)
        return ChainLayer(depth, name, path, LayerStatus.ERROR, fmt, error=error), None
    except Qcow2Error as exc:
        return ChainLayer(depth, name, path, LayerStatus.ERROR, fmt,
                          error=exc.with_filename(path)), None
    return ChainLayer(depth, name, path, LayerStatus.OK, fmt), image


def _next_layer(depth: int, name: str, fmt: Optional[str], above: str, seen: set[str],
                max_depth: int) -> Step:
    """The layer `name` (written in the image at `above`) as a step of the walk."""
    if depth > max_depth:
        # Named by the image that names the layer (as an invalid name is), the limit said.
        error = _chain_error(f"backing chain deeper than the limit of {max_depth} at "
                             f"'{printable(name)}' (depth {depth})", INVALID, above)
        return ChainLayer(depth, name, None, LayerStatus.TOO_DEEP, fmt, error=error), None
    problem = path_problem(name)
    if problem is not None:
        error = _chain_error(f"backing file name '{printable(name)}' {problem}", INVALID, above)
        return ChainLayer(depth, name, None, LayerStatus.INVALID_NAME, fmt, error=error), None
    if has_protocol(name):
        return ChainLayer(depth, name, None, LayerStatus.PROTOCOL, fmt), None
    path = backing_path(above, name)
    real = os.path.realpath(path)
    if real in seen:
        error = _chain_error(f"backing file '{printable(name)}' loops back into the chain",
                             INVALID, path)
        return ChainLayer(depth, name, path, LayerStatus.LOOP, fmt, error=error), None
    seen.add(real)
    if not os.path.exists(path):
        error = _chain_error(f"backing file '{printable(name)}' not found", IO_ERROR, path)
        return ChainLayer(depth, name, path, LayerStatus.MISSING, fmt, error=error), None
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
        error = exc.with_filename(path)
        yield ChainLayer(0, path, path, LayerStatus.ERROR, None, error=error), None
        return
    with image:
        yield from _walk_opened(image, path, max_depth)


def _walk_opened(image: Qcow2Image, path: str, max_depth: int) -> Generator[Step, None, None]:
    yield ChainLayer(0, path, path, LayerStatus.OK, "qcow2"), image
    yield from backing_layers(image, path, max_depth=max_depth)


def not_read_error(layer: ChainLayer) -> Qcow2Error:
    """Why a layer that is present was not read: a protocol name is never opened (read-only
    policy), a format other than qcow2 and raw is not analysed. Said alike by every command."""
    if layer.status == LayerStatus.PROTOCOL:
        message = "backing file name uses a protocol; not opened (read-only policy)"
    else:
        message = f"backing format {layer.format} is not analysed"
    return Qcow2Error(message, structure="backing file", value=layer.name, kind=UNSUPPORTED,
                      filename=layer.filename)


T = TypeVar("T")


@frozen_record
class Visited(Generic[T]):
    """One layer of a visited chain: the layer as walked (status, error), and what the reader
    made of it (None for a layer that was not read)."""

    layer: ChainLayer
    value: Optional[T] = None


def visit(path: str, read: Callable[[Qcow2Image, ChainLayer], Optional[T]], *,
          read_raw: Optional[Callable[[ChainLayer], T]] = None,
          max_depth: int = DEFAULT_MAX_DEPTH,
          opened: Optional[Qcow2Image] = None) -> Generator[Visited[T], None, None]:
    """The chain of the image at `path`, top first: each qcow2 layer read by `read` while it is
    open, each raw layer by `read_raw` (when given), every other layer as the walker reports it
    (status, error). A Qcow2Error of a reader makes that layer an error layer naming its file;
    the walk goes on below it (a consumer that needs the layer stops there). `opened`: the image
    at `path`, already open (only the chain below it is opened).

    Every front end walks chains through this, so that what a layer is and how it fails is
    decided here once; what a command does with each kind of layer is its own business."""
    steps = walk(path, max_depth=max_depth) if opened is None else _walk_opened(
        opened, path, max_depth)
    try:
        for layer, image in steps:
            try:
                if image is not None:
                    value = read(image, layer)
                elif read_raw is not None and layer.is_raw:
                    value = read_raw(layer)
                else:
                    value = None
            except Qcow2Error as exc:
                error = exc.with_filename(layer.filename)
                yield Visited(replace(layer, status=LayerStatus.ERROR, error=error))
                continue
            yield Visited(layer, value)
    finally:  # a consumer that stops early closes the files opened below
        steps.close()
