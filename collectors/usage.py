"""The fast usage figures of an image and of its whole backing chain."""

from __future__ import annotations

from contextlib import closing
from dataclasses import replace

from . import layout as L
from .chain import walk
from .container import container_of, held_for_writing
from .errors import Qcow2Error, internal_error
from .image import Qcow2Image
from .measure import prealloc_size
from .model import (
    DEFAULT_MAX_DEPTH,
    LAYER_ERROR,
    SOURCE_CHECK,
    SOURCE_REFCOUNTS,
    ChainLayer,
    ImageUsage,
    UsageResult,
)
from .refcount import image_end_offset_from_refcounts


def fully_allocated_size(image: Qcow2Image) -> int:
    """qemu-img measure's fully-allocated figure with the image's own cluster size, refcount
    width and L2 entry size, plus its LUKS header area."""
    h = image.header
    size = prealloc_size(h.size, h.cluster_size, h.refcount_order, h.extended_l2)
    crypto = image.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
    if crypto is not None:
        size += L.align_up(L.CryptoHeaderExtension.from_bytes(crypto.data).length,
                           h.cluster_size)
    return size


def end_offset(image: Qcow2Image) -> tuple[int, str, tuple[str, ...]]:
    """The image end offset, where it came from, and notes for the operator."""
    h = image.header
    if h.dirty:
        from .check import image_end_offset_by_walk  # numpy: only on this rare path

        return (image_end_offset_by_walk(image), SOURCE_CHECK,
                ("dirty bit set: on-disk refcounts untrusted, image end offset taken from a "
                 "full metadata walk",))
    return image_end_offset_from_refcounts(image), SOURCE_REFCOUNTS, ()


def image_usage(image: Qcow2Image) -> ImageUsage:
    h = image.header
    end, source, notes = end_offset(image)
    container = container_of(image.file, end)
    in_use = held_for_writing(image.file)
    notes += tuple(image.name_problems())
    if in_use:
        notes += ("held for writing by a running qemu: on-disk metadata may lag behind the "
                  "guest until its next flush",)
    bitmaps = image.bitmaps_extension
    return ImageUsage(
        filename=image.filename,
        image_end_offset=end,
        image_end_offset_source=source,
        container=container,
        usage_ratio=end / container.size if container.size else 1.0,
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
    )


def analyze_image(path: str) -> ImageUsage:
    """Usage of one image; raises Qcow2Error."""
    with Qcow2Image.open(path) as image:
        return _usage_of(image, path)


def _usage_of(image: Qcow2Image, path: str) -> ImageUsage:
    try:
        return image_usage(image)
    except Qcow2Error as exc:
        raise exc.with_filename(path) from None


def _layer_usage(layer: ChainLayer, image: Qcow2Image) -> ChainLayer:
    """The walker's ok layer with its usage, or turned into an error layer."""
    path = layer.path or layer.name
    try:
        return replace(layer, usage=_usage_of(image, path))
    except Qcow2Error as exc:
        return replace(layer, status=LAYER_ERROR, error=exc)
    except Exception as exc:  # last resort, as in analyze_usage()
        return replace(layer, status=LAYER_ERROR,
                       error=internal_error(exc, path))


def analyze_usage(path: str, *, chain: bool = True,
                  max_depth: int = DEFAULT_MAX_DEPTH) -> UsageResult:
    """Usage of the image at `path` and (by default) its backing chain. Never raises for a
    bad image: the error is carried in the result."""
    layers: list[ChainLayer] = []
    with closing(walk(path, max_depth=max_depth)) as steps:
        for step, image in steps:
            layer = _layer_usage(step, image) if image is not None else step
            if layer.error is not None and layer.depth == 0:
                return UsageResult(path, None, (), layer.error)
            layers.append(layer)
            if not chain or layer.usage is None:
                break
    top, *below = layers
    return UsageResult(path, top.usage, tuple(below), None)
