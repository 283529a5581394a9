"""The fast usage figures of an image and of its whole backing chain."""

from __future__ import annotations

import os
from typing import Optional

from . import layout as L
from .container import container_of, held_for_writing
from .discovery import has_qcow2_magic
from .errors import INVALID, Qcow2Error, internal_error
from .image import Qcow2Image
from .measure import prealloc_size
from .model import (
    DEFAULT_MAX_DEPTH,
    LAYER_ERROR,
    LAYER_INVALID_NAME,
    LAYER_LOOP,
    LAYER_MISSING,
    LAYER_NOT_QCOW2,
    LAYER_OK,
    LAYER_PROTOCOL,
    LAYER_TOO_DEEP,
    SOURCE_CHECK,
    SOURCE_REFCOUNTS,
    ChainLayer,
    ImageUsage,
    UsageResult,
)
from .names import path_problem, shown
from .refcount import image_end_offset_from_refcounts


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
        try:
            return image_usage(image)
        except Qcow2Error as exc:
            raise exc.with_filename(path) from None


def backing_chain(path: str, usage: ImageUsage,
                  max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[ChainLayer, ...]:
    """Every backing layer below `path`: analysed, or reported missing / looping / protocol /
    too deep. Names are only ever paths: pseudo-protocols are reported, never opened."""
    layers: list[ChainLayer] = []
    seen = {os.path.realpath(path)}
    above_path, above = path, usage
    depth = 0
    while above.backing_filename is not None:
        depth += 1
        name, fmt = above.backing_filename, above.backing_format
        if depth > max_depth:
            layers.append(ChainLayer(depth, name, None, LAYER_TOO_DEEP, fmt))
            break
        problem = path_problem(name)
        if problem is not None:
            error = Qcow2Error(f"'{shown(name)}' {problem}",
                               structure="backing file name", kind=INVALID,
                               filename=above_path)
            layers.append(ChainLayer(depth, name, None, LAYER_INVALID_NAME, fmt, error=error))
            break
        if has_protocol(name):
            layers.append(ChainLayer(depth, name, None, LAYER_PROTOCOL, fmt))
            break
        resolved = backing_path(above_path, name)
        real = os.path.realpath(resolved)
        if real in seen:
            layers.append(ChainLayer(depth, name, resolved, LAYER_LOOP, fmt))
            break
        seen.add(real)
        if not os.path.exists(resolved):
            layers.append(ChainLayer(depth, name, resolved, LAYER_MISSING, fmt))
            break
        try:
            if fmt not in (None, "qcow2") or not has_qcow2_magic(resolved):
                layers.append(ChainLayer(depth, name, resolved, LAYER_NOT_QCOW2, fmt or "raw"))
                break
            layer_usage = analyze_image(resolved)
        except OSError as exc:
            error = Qcow2Error(exc.strerror or str(exc), structure="backing file",
                               filename=resolved)
            layers.append(ChainLayer(depth, name, resolved, LAYER_ERROR, fmt, error=error))
            break
        except Qcow2Error as exc:
            layers.append(ChainLayer(depth, name, resolved, LAYER_ERROR, fmt,
                                     error=exc.with_filename(resolved)))
            break
        except Exception as exc:  # last resort, as in analyze_usage()
            layers.append(ChainLayer(depth, name, resolved, LAYER_ERROR, fmt,
                                     error=internal_error(exc, resolved)))
            break
        layers.append(ChainLayer(depth, name, resolved, LAYER_OK, fmt, usage=layer_usage))
        above_path, above = resolved, layer_usage
    return tuple(layers)


def analyze_usage(path: str, *, chain: bool = True,
                  max_depth: int = DEFAULT_MAX_DEPTH) -> UsageResult:
    """Usage of the image at `path` and (by default) its backing chain. Never raises for a
    bad image: the error is carried in the result."""
    try:
        usage = analyze_image(path)
    except Qcow2Error as exc:
        return UsageResult(path, None, (), exc.with_filename(path))
    except Exception as exc:  # last resort: never let one image stop the others
        return UsageResult(path, None, (), internal_error(exc, path))
    layers = backing_chain(path, usage, max_depth) if chain else ()
    return UsageResult(path, usage, layers, None)


def first_error(result: UsageResult) -> Optional[Qcow2Error]:
    if result.error is not None:
        return result.error
    for layer in result.chain:
        if layer.error is not None:
            return layer.error
    return None
