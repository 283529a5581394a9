"""The one qcow2 health policy: what is critical, what is a warning, what is fine.

Every adapter follows it: check_qcow2 turns it into its exit state, qcow2-telegraf and
qcow2-textfile export it as the per-image ``health`` figure with its reasons, and the shipped
Prometheus alert rules fire on those reasons. Each rule has a default state and one option to
change it (``--<rule>-state``), declared here once for every adapter.

States are numbered as Nagios numbers them: 0 ok, 1 warning, 2 critical, 3 unknown ("could not
look"); which state wins when several rules apply is :func:`worst`.
"""

from __future__ import annotations

from ..common.errors import INVALID, OUT_OF_BOUNDS, TRUNCATED, Qcow2Error
from ..common.record import frozen_record
from ..common.text import printable
from ..common.units import counted, human_size
from .extend import extension_text
from .model import (
    ChainLayer,
    CheckResult,
    ContainerKind,
    Health,
    ImageUsage,
    LayerStatus,
    PauseReason,
    Reason,
    State,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence

OK, WARNING, CRITICAL, UNKNOWN = State.OK, State.WARNING, State.CRITICAL, State.UNKNOWN
STATE_NAMES: dict[int, str] = {state: state.name for state in State}
STATE_BY_NAME = {state.name.lower(): state for state in State}
# Which state wins. CRITICAL outranks UNKNOWN so that one unreadable image cannot hide another
# one that is broken.
SEVERITY: dict[int, int] = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}

# Error kinds that mean "the metadata is there but damaged", as opposed to "we could not look"
# (permission, not found, not qcow2, unsupported feature, a bug of ours).
DAMAGED_KINDS = frozenset({INVALID, OUT_OF_BOUNDS, TRUNCATED})
# Backing-layer states that keep qemu from opening the image above (the VM cannot start).
# The status of the images above such a layer: "backing-" and the layer's (model.LayerStatus).
BACKING_STATUS = {status: LayerStatus(f"backing-{status}") for status in (
    LayerStatus.MISSING, LayerStatus.LOOP, LayerStatus.NOT_QCOW2, LayerStatus.ERROR)}
BROKEN_LAYER_STATES = frozenset(BACKING_STATUS)


@frozen_record
class Rule:
    name: str  # also the option: --<name>-state
    default: State
    applies: str  # completes "state when ..." in the help


RULE_CORRUPT = "corrupt"
RULE_CORRUPTIONS = "corruptions"
RULE_DAMAGED = "damaged"
RULE_BACKING = "backing"
RULE_DIRTY = "dirty"
RULE_DIRTY_IN_USE = "dirty-in-use"
RULE_LEAKS = "leaks"
RULE_UNCONFIRMED = "unconfirmed"
RULE_UNKNOWN = "unknown"
RULE_PAUSED_NOSPACE = "paused-nospace"
RULE_PAUSED_IOERROR = "paused-ioerror"
RULE_PAUSED = "paused"
RULE_EXTEND = "extend"

RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule(RULE_CORRUPT, CRITICAL, "qemu has set the image's corrupt bit"),
    Rule(RULE_CORRUPTIONS, CRITICAL, "--check finds corruptions"),
    Rule(RULE_DAMAGED, CRITICAL, "metadata cannot be read because it is damaged (or --check "
         "reports check errors)"),
    Rule(RULE_BACKING, CRITICAL, "a backing layer is missing, loops, is unreadable or is not "
         "the qcow2 it is declared to be (the VM cannot start)"),
    Rule(RULE_DIRTY, WARNING, "the dirty bit is set and no qemu has the image open (lazy "
         "refcounts not flushed; qemu repairs them on the next open)"),
    Rule(RULE_DIRTY_IN_USE, OK, "the dirty bit is set while a qemu has the image open (lazy "
         "refcounts by design)"),
    Rule(RULE_LEAKS, WARNING, "--check finds leaked clusters"),
    # Not a problem found, a problem not ruled out: a running qemu was writing the entries
    # behind these findings (collectors/check/settle.py). A note by default: a busy disk must
    # not page anyone; a problem that holds still is confirmed and judged by its own rule.
    Rule(RULE_UNCONFIRMED, OK, "--check could not confirm findings on an image a running qemu "
         "is writing (certain after the guest's next flush, or with the VM stopped)"),
    Rule(RULE_UNKNOWN, UNKNOWN, "the image could not be looked at (permission, not found, not "
         "qcow2, unsupported, a backing chain deeper than the limit)"),
    Rule(RULE_PAUSED_NOSPACE, CRITICAL, "the VM using the image is paused because its "
         "volume (or filesystem) is full"),
    Rule(RULE_PAUSED_IOERROR, CRITICAL, "the VM using the image is paused by another I/O "
         "error (of this disk or of another)"),
    Rule(RULE_PAUSED, OK, "the VM using the image is paused for another reason (by its user, "
         "a migration, a snapshot, ...)"),
    Rule(RULE_EXTEND, WARNING, "the image's block volume has less headroom than the "
         "watermark: extend it (--extend-chunk, --extend-utilization)"),
)}


Policy = dict[str, State]  # rule name -> state


def default_policy() -> Policy:
    return {name: rule.default for name, rule in RULES.items()}


def worst(states: Sequence[int]) -> State:
    return State(max(states, key=SEVERITY.__getitem__, default=OK))


def _error_state(error: Qcow2Error) -> str:
    return RULE_DAMAGED if error.kind in DAMAGED_KINDS else RULE_UNKNOWN


def error_without_filename(error: Qcow2Error) -> str:
    """The error with structure, offset and value, without the leading file name (the image
    is named beside the reason already)."""
    text = str(error)
    if error.filename and text.startswith(error.filename + ": "):
        text = text[len(error.filename) + 2 :]
    return text


def _layer_text(layer: ChainLayer) -> str:
    name = f"'{printable(layer.name)}'"  # the one rule of every output (common/text.py)
    if layer.status == LayerStatus.MISSING:
        return f"backing file {name} (depth {layer.depth}) not found"
    if layer.status == LayerStatus.LOOP:
        return f"backing file {name} (depth {layer.depth}) loops back into the chain"
    if layer.status == LayerStatus.NOT_QCOW2:
        return f"backing file {name} (depth {layer.depth}) is not qcow2"
    detail = f": {layer.error.message}" if layer.error is not None else ""
    return f"backing file {name} (depth {layer.depth}) unreadable{detail}"


def broken_layer(chain: Sequence[ChainLayer]) -> Optional[ChainLayer]:
    """The first layer that keeps qemu from opening the chain above it, if any."""
    return next((layer for layer in chain if layer.status in BROKEN_LAYER_STATES), None)


def _pause_reason(usage: ImageUsage) -> Optional[tuple[str, str]]:
    """The rule and text of a paused VM, with what to do."""
    pause = usage.pause
    if pause is None:
        return None
    vm = f"VM {pause.domain} paused"
    resume = f"resume the VM ({pause.resume})"
    if pause.reason == PauseReason.NOSPACE:
        where = (f"{pause.disk} ({usage.filename}, end offset {human_size(usage.end_offset)} "
                 f"of {human_size(usage.container.size)})")
        if usage.container.kind == ContainerKind.BLOCK:
            action = extension_text(usage.extension) if usage.extension is not None \
                else "extend the volume"
        else:
            action = f"free space on its filesystem ({usage.container.filesystem})"
        return RULE_PAUSED_NOSPACE, f"{vm}: no space on {where}: {action}, then {resume}"
    if pause.reason == PauseReason.OTHER_DISK:
        return (RULE_PAUSED_IOERROR, f"{vm} by an I/O error of another disk "
                f"({pause.error_disk}), not of {pause.disk}: {resume} once that is fixed")
    if pause.reason == PauseReason.IOERROR:
        return (RULE_PAUSED_IOERROR, f"{vm}: I/O error on {pause.disk} ({usage.filename}): "
                f"look at the storage and the host's kernel log, then {resume}")
    return RULE_PAUSED, f"{vm} ({pause.reason}): no problem of the disk"


def _usage_reasons(usage: ImageUsage, check: Optional[CheckResult]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    paused = _pause_reason(usage)
    if paused is not None:
        found.append(paused)
    extension = usage.extension
    # A VM paused on a full volume says how to extend it already.
    if extension is not None and (paused is None or paused[0] != RULE_PAUSED_NOSPACE):
        found.append((RULE_EXTEND, f"headroom {human_size(usage.container.headroom)} below "
                      f"the watermark {human_size(extension.watermark)}: "
                      + extension_text(extension)))
    if usage.corrupt:
        found.append((RULE_CORRUPT, "corrupt bit set"))
    lazy_debt = usage.dirty and usage.lazy_refcounts
    if usage.dirty:
        debt = ""
        if check is not None and (check.corruptions or check.leaks):
            # With lazy refcounts qemu writes refcounts only at a clean close: what the check
            # finds meanwhile is the expected debt, not corruption (qcow2_mark_dirty()).
            debt = (f"; {counted(check.corruptions, 'corruption')}, "
                    f"{counted(check.leaks, 'leaked cluster')} are the expected lazy-refcount "
                    "debt")
        if usage.in_use:
            found.append((RULE_DIRTY_IN_USE, "dirty while in use with lazy refcounts" + debt))
        else:
            found.append((RULE_DIRTY, "dirty, not in use: repaired by qemu on next open" + debt))
    if check is not None:
        if check.corruptions and not lazy_debt:
            found.append((RULE_CORRUPTIONS, counted(check.corruptions, "corruption")))
        if check.leaks and not lazy_debt:
            found.append((RULE_LEAKS, counted(check.leaks, "leaked cluster")))
        if check.check_errors:
            found.append((RULE_DAMAGED, counted(check.check_errors, "check error")))
        if check.unconfirmed:
            found.append((RULE_UNCONFIRMED, f"{counted(check.unconfirmed, 'finding')} "
                          "unconfirmed while a running qemu writes the image: certain after "
                          "the guest's next flush, or with the VM stopped"))
    return found


def assess(
    *,
    usage: Optional[ImageUsage],
    check: Optional[CheckResult],
    error: Optional[Qcow2Error],
    layer: Optional[ChainLayer] = None,
    broken_below: Optional[ChainLayer] = None,
    policy: Optional[Policy] = None,
) -> Health:
    """Judge one image (a target, or with `layer` one backing layer itself).

    `broken_below` is the first broken layer under this image: a top image whose chain cannot
    be opened is as bad as the missing layer itself.
    """
    states = policy if policy is not None else default_policy()
    found: list[tuple[str, str]] = []
    if layer is not None and layer.status == LayerStatus.ERROR and error is not None:
        # The layer itself could not be read: damaged metadata, or we could not look. The
        # images above it get the backing rule (broken_below).
        found.append((_error_state(error), error_without_filename(error)))
    elif layer is not None and layer.status in BROKEN_LAYER_STATES:
        found.append((RULE_BACKING, _layer_text(layer)))
    elif layer is not None and layer.status == LayerStatus.TOO_DEEP:
        found.append((RULE_UNKNOWN, f"backing chain deeper than the limit of {layer.depth - 1} "
                      f"at '{printable(layer.name)}' (depth {layer.depth})"))
    elif error is not None:
        found.append((_error_state(error), error_without_filename(error)))
    if broken_below is not None:
        found.append((RULE_BACKING, _layer_text(broken_below)))
    if usage is not None:
        found += _usage_reasons(usage, check)
    reasons = tuple(Reason(rule, states[rule], text) for rule, text in found)
    return Health(worst([reason.state for reason in reasons]), reasons)
