"""Target-selection options shared by every adapter, declared once so that selection is
identical in check_qcow2, qcow2-telegraf and qcow2-textfile."""

from __future__ import annotations

import argparse
from typing import Union

from .collect import collect
from .metrics import Collection
from .model import DEFAULT_MAX_DEPTH

MAX_DEPTH_LIMIT = 256
ArgumentContainer = Union[argparse.ArgumentParser, "argparse._ArgumentGroup"]


def depth_option(text: str) -> int:
    """argparse type of --max-depth: a backing-chain depth limit of 1..256."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_DEPTH_LIMIT:
        raise argparse.ArgumentTypeError(f"invalid depth {text!r} (1..{MAX_DEPTH_LIMIT})")
    return int(text)


def add_selection_arguments(group: ArgumentContainer) -> None:
    """--running, --chain, --max-depth and --check (targets themselves are each adapter's:
    positional TARGETs, or Nagios-style -f IMAGE)."""
    group.add_argument(
        "--running", action="store_true",
        help="also every qcow2 image a running qemu process holds open (backing layers "
        "included)",
    )
    group.add_argument(
        "--chain", action="store_true", help="also report each image's backing layers"
    )
    group.add_argument(
        "--max-depth", type=depth_option, default=DEFAULT_MAX_DEPTH, metavar="N",
        help=f"follow at most N backing files (default {DEFAULT_MAX_DEPTH})",
    )
    group.add_argument(
        "--check", action="store_true",
        help="also run the full consistency check like qemu-img check (slower: reads all "
        "metadata)",
    )


def collect_selected(targets: list[str], args: argparse.Namespace) -> Collection:
    """collect() with the options add_selection_arguments() declared."""
    return collect(targets, running=args.running, chain=args.chain, check=args.check,
                   max_depth=args.max_depth)
