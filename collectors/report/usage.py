"""The fast usage figures of an image and of its whole backing chain."""

from __future__ import annotations

from contextlib import closing
from dataclasses import replace
from typing import Optional

from ..common.errors import Qcow2Error, internal_error
from ..host.container import container_of
from ..host.live import LiveView, no_live_source_note
from ..qcow2 import layout as L
from ..qcow2.chain import walk
from ..qcow2.image import Qcow2Image
from ..qcow2.prealloc import fully_allocated_size
from ..qcow2.reader import held_for_writing
from ..qcow2.refcount import end_and_free_below
from ..qcow2.steady import read_steadily
from .model import (
    DEFAULT_MAX_DEPTH,
    LAYER_ERROR,
    LAYER_OK,
    SOURCE_CHECK,
    SOURCE_REFCOUNTS,
    ChainLayer,
    ImageUsage,
    UsageResult,
)


def end_offset(image: Qcow2Image, in_use: Optional[bool] = None
               ) -> tuple[int, str, tuple[str, ...], Optional[int]]:
    """The image end offset, where it came from, notes for the operator, and the free bytes
    below the end (None when the on-disk refcounts are untrusted). On an image held for
    writing (`in_use`, probed when not given), from a read during which qemu moved no table:
    the refcount table it outgrew may hold data by then (collectors/qcow2/steady.py)."""
    h = image.header
    if in_use is None:
        in_use = held_for_writing(image.file)
    if h.dirty:
        from ..check.checker import image_end_offset_by_walk  # numpy: only on this rare path

        return (image_end_offset_by_walk(image), SOURCE_CHECK,
                ("dirty bit set: on-disk refcounts untrusted, image end offset taken from a "
                 "full metadata walk",), None)
    if in_use:
        end, free = read_steadily(image, end_and_free_below)
    else:
        end, free = end_and_free_below(image)
    return end, SOURCE_REFCOUNTS, (), free


def image_usage(image: Qcow2Image, live: Optional[LiveView] = None) -> ImageUsage:
    h = image.header
    in_use = held_for_writing(image.file)
    end, source, notes, free_below_end = end_offset(image, in_use)
    live_disk = live.lookup(image.file.stat) if live is not None else None
    live_end = live_disk.end_offset if live_disk is not None else None
    container = container_of(image.file, max(end, live_end or 0))
    notes += tuple(image.name_problems())
    if live_disk is not None and live_disk.end_offset > end:
        notes += (f"live end offset {live_disk.end_offset} ({live_disk.source}: "
                  f"{live_disk.domain} {live_disk.disk}) is {live_disk.end_offset - end} bytes "
                  "ahead of the on-disk figure: qemu has not yet written back its metadata",)
    elif in_use and live_disk is None:
        notes += ("held for writing by a running qemu: on-disk metadata may lag behind the "
                  "guest until its next flush; "
                  + no_live_source_note(live.libvirt_note if live is not None else None),)
    bitmaps = image.bitmaps_extension
    return ImageUsage(
        filename=image.filename,
        image_end_offset=end,
        image_end_offset_source=source,
        container=container,
        usage_ratio=container.usage_ratio,
        fully_allocated_size=fully_allocated_size(image),
        virtual_size=h.size,
        cluster_size=h.cluster_size,
        qcow_version=h.version,
        in_use=in_use,
        dirty=h.dirty,
        corrupt=h.corrupt,
        lazy_refcounts=h.lazy_refcounts,
        refcounts_trusted=not h.dirty,
        encrypted=h.crypt_method != L.CRYPT_NONE,
        backing_filename=image.backing_filename,
        backing_format=image.backing_format,
        external_data_file=image.data_file_name,
        snapshots=h.nb_snapshots,
        bitmaps=bitmaps.nb_bitmaps if bitmaps is not None else 0,
        notes=notes,
        live_end_offset=live_end,
        domain=live_disk.domain if live_disk is not None else None,
        disk=live_disk.disk if live_disk is not None else None,
        pause=live_disk.pause if live_disk is not None else None,
        free_below_end=free_below_end,
    )


def analyze_image(path: str, live: Optional[LiveView] = None) -> ImageUsage:
    """Usage of one image (with its live figure when `live` covers it); raises Qcow2Error."""
    with Qcow2Image.open(path) as image:
        return _usage_of(image, path, live)


def _usage_of(image: Qcow2Image, path: str, live: Optional[LiveView]) -> ImageUsage:
    try:
        return image_usage(image, live)
    except Qcow2Error as exc:
        raise exc.with_filename(path) from None


def _layer_usage(layer: ChainLayer, image: Qcow2Image, live: Optional[LiveView]) -> ChainLayer:
    """The walker's ok layer with its usage, or turned into an error layer."""
    path = layer.path or layer.name
    try:
        return replace(layer, usage=_usage_of(image, path, live))
    except Qcow2Error as exc:
        return replace(layer, status=LAYER_ERROR, error=exc)
    except Exception as exc:  # last resort, as in analyze_usage()
        return replace(layer, status=LAYER_ERROR,
                       error=internal_error(exc, path))


def analyze_usage(path: str, *, chain: bool = True, max_depth: int = DEFAULT_MAX_DEPTH,
                  live: Optional[LiveView] = None) -> UsageResult:
    """Usage of the image at `path` and (by default) its backing chain. Never raises for a
    bad image: the error is carried in the result."""
    layers: list[ChainLayer] = []
    with closing(walk(path, max_depth=max_depth)) as steps:
        for step, image in steps:
            # Without `chain` the layers are still opened by the walker (headers only): a
            # missing or broken backing file keeps the VM from starting, and finding that out
            # is cheap. Only their usage figures are left out.
            wanted = image is not None and (chain or step.depth == 0)
            layer = _layer_usage(step, image, live) if wanted and image is not None else step
            if layer.error is not None and layer.depth == 0:
                return UsageResult(path, None, (), layer.error)
            layers.append(layer)
            if layer.status != LAYER_OK:
                break
    top, *below = layers
    return UsageResult(path, top.usage, tuple(below), None, analyzed_chain=chain)
