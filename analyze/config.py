"""`qcow2-analyze config`: the configuration files the package ships, found where they were
installed, and rendered with the real path of the installed commands.

The Nagios and Icinga 2 definitions, the Telegraf snippets, the systemd unit and timer, the cron
line and the Prometheus alert rules are package data of their adapter; the sudoers drop-in, which
serves two adapters, of cli. Files that start a
command name it as ``@BINDIR@/command``; this command replaces ``@BINDIR@`` with the directory
the commands were installed into (a virtual environment's ``bin``, ``/usr/local/bin``, ...), so
that what an operator copies into /etc runs the right program. The alert rules take parameters
(windows, delays: node_exporter_textfile/rules.py): ``--set NAME=VALUE`` prints them changed.
"""

from __future__ import annotations

import os
import sys

from qcow2_monitor.cli.exits import EXIT_OK, EXIT_USAGE
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.parser import invalid_value

from .common import epilog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, TextIO

BINDIR_PLACEHOLDER = "@BINDIR@"

# name -> (adapter package beside this one, what the file is for)
SHIPPED: dict[str, tuple[str, str]] = {
    "qcow2.conf": ("nagios", "Nagios Core command definitions (uses $USER1$/check_qcow2)"),
    "qcow2-icinga2.conf": ("nagios", "Icinga 2 CheckCommand (uses PluginDir/check_qcow2)"),
    "qcow2-exec.conf": ("telegraf", "Telegraf >= 1.39 inputs.exec (argv form of commands)"),
    "qcow2-exec-legacy.conf": ("telegraf", "Telegraf <= 1.38 inputs.exec (string form)"),
    "qcow2-execd.conf": ("telegraf", "Telegraf inputs.execd (a long-running collector)"),
    "qcow2-textfile.service": ("node_exporter_textfile", "systemd service writing the textfile"),
    "qcow2-textfile.timer": ("node_exporter_textfile", "systemd timer: the service every minute"),
    "qcow2-textfile.cron": ("node_exporter_textfile", "/etc/cron.d line, with an overlap lock"),
    "qcow2.rules.yml": ("node_exporter_textfile", "Prometheus alerting rules"),
    "qcow2.rules.test.yml": ("node_exporter_textfile", "promtool test rules for them"),
    "qcow2-monitor.sudoers": ("cli", "/etc/sudoers.d drop-in: the agents' users may run "
                              "check_qcow2 and qcow2-telegraf as root, read-only options only"),
}
RULES = "qcow2.rules.yml"  # the one file with parameters (--set)


def _adapter_package(adapter: str) -> str:
    # Siblings of this package, whatever it is installed as (e.g. qcow2_monitor.analyze).
    parent = __package__.rpartition(".")[0] if __package__ else ""
    return f"{parent}.{adapter}" if parent else adapter


def shipped_path(name: str) -> str:
    """Where the shipped file `name` is installed."""
    from importlib import resources  # only for `config`: about 1 MiB beside every command

    adapter, _what = SHIPPED[name]
    return str(resources.files(_adapter_package(adapter)).joinpath(name))


def bin_dir() -> str:
    """The directory the package's commands were installed into: the one holding the running
    console script, else the interpreter's scripts directory."""
    running = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(running) == "qcow2-analyze" and os.path.isfile(running):
        return os.path.dirname(running)
    import sysconfig

    return sysconfig.get_path("scripts")


def render(name: str, settings: Optional[dict[str, str]] = None) -> str:
    """The shipped file `name`, every ``@BINDIR@/command`` naming the installed command, and
    for the alert rules the parameters in `settings` set. Only the placeholder before a command
    name is replaced: a comment explaining "@BINDIR@" keeps saying so in the rendered file."""
    with open(shipped_path(name), encoding="utf-8") as file:
        text = file.read().replace(BINDIR_PLACEHOLDER + "/", bin_dir() + "/")
    if name == RULES:
        from qcow2_monitor.node_exporter_textfile.rules import render_rules

        text = render_rules(text, settings or {})
    return text


def _setting(text: str) -> tuple[str, str]:
    """argparse type of --set (a bad one is a bad command line: exit 64)."""
    from qcow2_monitor.node_exporter_textfile.rules import RuleParameterError, parse_setting

    try:
        return parse_setting(text)
    except RuleParameterError as exc:
        raise invalid_value(str(exc)) from None


def run_config(args: Namespace, out: TextIO, err: TextIO) -> int:
    if args.name is None:
        width = max(len(name) for name in SHIPPED)
        for name, (_adapter, what) in SHIPPED.items():
            out.write(f"{name:<{width}}  {shipped_path(name)}\n{'':<{width}}  {what}\n")
        return EXIT_OK
    if args.settings and args.name != RULES:
        err.write(f"qcow2-analyze config: --set applies to {RULES} only\n")
        return EXIT_USAGE
    from qcow2_monitor.node_exporter_textfile.rules import RuleParameterError

    try:
        text = render(args.name, dict(args.settings))
    except RuleParameterError as exc:  # e.g. ALERT.for naming no alert of the file
        err.write(f"qcow2-analyze config: {exc}\n")
        return EXIT_USAGE
    out.write(text)
    return EXIT_OK


def register(sub: Any) -> None:
    config = sub.add_parser(
        "config", help="list the shipped configuration files, or print one ready to install",
        description="Without NAME: every configuration file the package ships, with the path "
        "it was installed at. With NAME: that file, with @BINDIR@ replaced by the directory of "
        "the installed commands, ready to copy into /etc. The alert rules take parameters "
        "(--set).",
        epilog=epilog("config", "config qcow2-textfile.service > "
                      "/etc/systemd/system/qcow2-textfile.service",
                      "config qcow2.rules.yml --set trend_window=12h --set "
                      "Qcow2ImageWarning.for=1h > /etc/prometheus/rules/qcow2.rules.yml",
                      exit_codes="exit codes: 0 printed; 64 bad command line (e.g. a NAME "
                      "that is not shipped)."))
    config.add_argument("name", nargs="?", metavar="NAME", choices=list(SHIPPED),
                        help="one of: " + ", ".join(SHIPPED))
    # The parameters are declared in node_exporter_textfile/rules.py, imported only when --set
    # is used (not at every start of qcow2-analyze).
    config.add_argument("--set", dest="settings", action="append", default=[],
                        type=_setting, metavar="NAME=DURATION",
                        help=f"with {RULES}: set a parameter of the rules to a Prometheus "
                        "duration: trend_window (default 6h, the fill-up trend's range), "
                        "stale_after (10m, how old the last successful run may get), "
                        "ALERT.for (one alert's for:), for (every alert's for:)")
    config.set_defaults(handler=run_config)


__all__ = ["BINDIR_PLACEHOLDER", "RULES", "SHIPPED", "bin_dir", "register", "render",
           "shipped_path"]
