"""Collecting: discover the targets, analyse each image and its backing chain, optionally run
the full check, and gather the records the metric model (:mod:`collectors.metrics`) maps.

The core is imported lazily (it may pull in numpy): the Nagios plugin imports this module on
every check and must stay light.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Callable, Iterator, Optional, Sequence

from .discovery import Target, dedupe_targets, expand_targets, running_images
from .errors import INTERNAL, IO_ERROR, Qcow2Error
from .metrics import Collection, ImageRecord
from .model import (
    DEFAULT_MAX_DEPTH,
    CheckResult,
    UsageResult,
)

AnalyzeFn = Callable[..., UsageResult]
CheckFn = Callable[..., CheckResult]

def _analyze_fn() -> AnalyzeFn:
    from .usage import analyze_usage

    return analyze_usage


def _check_fn() -> CheckFn:
    from .check import check_image

    return check_image


def _internal_error(path: str, exc: BaseException) -> Qcow2Error:
    # One image must never blind the monitoring of all others: an unexpected exception becomes
    # this image's scrape error, with its type so that the bug can be reported.
    kind = IO_ERROR if isinstance(exc, OSError) else INTERNAL
    return Qcow2Error(
        f"{type(exc).__name__}: {exc}", structure="collector", kind=kind, filename=path
    )


def _records_for(
    target: Target, analyze: AnalyzeFn, *, chain: bool, max_depth: int
) -> Iterator[ImageRecord]:
    if target.path is None:
        yield ImageRecord(target.spec, None, 0, None, None, target.error)
        return
    try:
        result = analyze(target.path, chain=chain, max_depth=max_depth)
    except Exception as exc:  # see _internal_error
        error = _internal_error(target.path, exc)
        yield ImageRecord(target.spec, target.path, 0, None, None, error)
        return
    yield ImageRecord(target.spec, target.path, 0, result.usage, None, result.error)
    for layer in result.chain:
        yield ImageRecord(
            target.spec,
            layer.path,
            layer.depth,
            layer.usage,
            None,
            layer.error,
            status=layer.status,
            name=layer.name,
        )


def _with_check(record: ImageRecord, check_fn: CheckFn) -> ImageRecord:
    if record.usage is None or record.path is None or record.error is not None:
        return record
    try:
        result = check_fn(record.path)
    except Qcow2Error as exc:
        return replace(record, error=exc)
    except Exception as exc:  # see _internal_error
        return replace(record, error=_internal_error(record.path, exc))
    return replace(record, check=result)


def collect(
    specs: Sequence[str],
    *,
    running: bool = False,
    chain: bool = False,
    check: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Collection:
    """Discover targets, analyse each (and its backing chain), optionally run the full check.

    Never raises for image problems: a failing target is a record with `error` set and the others
    still report. Each image is reported once, by real path: a base shared by several overlays,
    or also named as a target, keeps the depth at which it was first met.
    """
    started = time.monotonic()
    analyze = _analyze_fn()
    check_fn = _check_fn() if check else None
    targets = expand_targets(specs)
    if running:
        targets = dedupe_targets([*targets, *(Target(p, p) for p in running_images())])
    seen: set[tuple[str, Optional[int]]] = set()
    records: list[ImageRecord] = []
    for target in targets:
        for record in _records_for(target, analyze, chain=chain, max_depth=max_depth):
            # A failed layer is keyed with its depth too: a chain looping back to its top names
            # an already reported file, and that loop must still be reported.
            name = os.path.realpath(record.path) if record.path else record.label_path
            key = (name, record.depth if record.error is not None else None)
            if key in seen:
                continue
            seen.add(key)
            if check_fn is not None:
                record = _with_check(record, check_fn)
            records.append(record)
    return Collection(tuple(records), time.monotonic() - started, time.time())
