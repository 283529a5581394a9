"""Run a real Icinga 2 or Nagios Core 4 in a temporary directory.

Nothing system-wide is touched: every compiled-in path is overridden, the daemons run as the
current user (or, inside tests/debian_root.py's isolated root, as the agent's own user: an
Agent), and they are always stopped (bounded waits, then SIGKILL). Missing tools fail the test
with the package to install; nothing is skipped.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tree import BIN, REPO

ICINGA_CONF = REPO / "nagios" / "qcow2-icinga2.conf"
NAGIOS_CONF = REPO / "nagios" / "qcow2.conf"
PLUGIN = BIN / "check_qcow2"

# Debian package names, for the failure message when a tool is missing.
_PACKAGES = {
    "icinga2": "icinga2-bin icinga2-common",
    "nagios4": "nagios4-core",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "losetup": "mount",
}


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{tool} not found: apt-get install -y {_PACKAGES.get(tool, tool)}")
    return path


def plugin_script() -> Path:
    if not os.access(PLUGIN, os.X_OK):
        pytest.fail(f"{PLUGIN} missing: run {REPO}/.venv/bin/pip install -e {REPO}")
    return PLUGIN


def plugin_dir(base: Path) -> Path:
    """A PluginDir / $USER1$ holding check_qcow2, as an installation would have it."""
    directory = base / "plugins"
    directory.mkdir()
    (directory / "check_qcow2").symlink_to(plugin_script())
    return directory


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass(frozen=True)
class Agent:
    """Who a daemon runs as and where: the user and group it switches to, and the argv prefix
    that starts it (none: on this host; nsenter: inside the isolated root of
    tests/debian_root.py, where that user may exist only)."""

    user: str
    group: str
    enter: tuple[str, ...] = ()

    def argv(self, command: list[str]) -> list[str]:
        return [*self.enter, *command]

    def own(self, base: Path) -> None:
        """Give the daemon's directory to its user (started as root, it switches to it)."""
        if (self.user, self.group) != _user():
            subprocess.run(self.argv(["chown", "-R", f"{self.user}:{self.group}", str(base)]),
                           check=True, timeout=60)


def _user() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def here() -> Agent:
    """The current user, on this host."""
    return Agent(*_user())


def _stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- Icinga 2 -------------------------------------------------------------------------------


def icinga_defines(base: Path, plugins: Path, agent: Optional[Agent] = None) -> list[str]:
    """Every compiled-in path and the user overridden (writing them in the config fails)."""
    user, group = (agent.user, agent.group) if agent else _user()
    return [
        f"-DConfigDir={base}",
        f"-DZonesDir={base}/zones.d",
        f"-DDataDir={base}/data",
        f"-DCacheDir={base}/cache",
        f"-DLogDir={base}/log",
        f"-DSpoolDir={base}/spool",
        f"-DInitRunDir={base}/run",
        f"-DPluginDir={plugins}",
        # Without these, root drops to "nagios", which cannot read a root-owned temp dir.
        f"-DRunAsUser={user}",
        f"-DRunAsGroup={group}",
    ]


def icinga_string(value: str) -> str:
    """An Icinga 2 string literal. A literal "$" must be doubled, or it starts a macro."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def icinga_config(base: Path, services: dict[str, dict[str, Any]],
                  includes: Optional[list[str]] = None) -> Path:
    """icinga2.conf with the shipped CheckCommand included verbatim (or the `includes` given)
    and one Service per entry.

    ``services`` maps a service name to its ``vars`` (str, bool, int or list of str); the
    ``check_command`` var, when given, names the CheckCommand (default "qcow2").
    """
    if includes is None:
        includes = [f"include {icinga_string(str(ICINGA_CONF))}"]
    lines = [
        "include <itl>",
        *includes,
        'object CheckerComponent "checker" { }',
        'object Host "qcow2-host" {',
        '  check_command = "dummy"',
        "  enable_active_checks = false",
        "}",
    ]
    for name, variables in services.items():
        variables = dict(variables)
        command = variables.pop("check_command", "qcow2")
        lines += [
            f"object Service {icinga_string(name)} {{",
            '  host_name = "qcow2-host"',
            f"  check_command = {icinga_string(command)}",
            "  check_interval = 1s",
            "  retry_interval = 1s",
            "  max_check_attempts = 1",
        ]
        for key, value in variables.items():
            lines.append(f"  vars.{key} = {_icinga_value(value)}")
        lines.append("}")
    config = base / "icinga2.conf"
    config.write_text("\n".join(lines) + "\n")
    for sub in ("zones.d", "data", "cache", "log", "spool", "run"):
        (base / sub).mkdir(exist_ok=True)
    return config


def _icinga_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[ " + ", ".join(icinga_string(item) for item in value) + " ]"
    return icinga_string(str(value))


def icinga_validate(config: Path, base: Path, plugins: Path,
                    agent: Optional[Agent] = None) -> subprocess.CompletedProcess[str]:
    icinga2 = require("icinga2")
    agent = agent or here()
    agent.own(base)
    return subprocess.run(
        agent.argv([icinga2, "daemon", "-C", "-c", str(config),
                    *icinga_defines(base, plugins, agent)]),
        capture_output=True, text=True, timeout=60, check=False,
    )


def read_icinga_state(path: Path) -> dict[str, dict[str, Any]]:
    """Last check results by service name from icinga2.state (netstring records of JSON)."""
    data = path.read_bytes()
    results: dict[str, dict[str, Any]] = {}
    pos = 0
    while pos < len(data):
        colon = data.index(b":", pos)
        length = int(data[pos:colon])
        record = json.loads(data[colon + 1 : colon + 1 + length])
        pos = colon + 1 + length + 1  # skip the trailing ","
        if record.get("type") != "Service":
            continue
        check_result = (record.get("update") or {}).get("last_check_result")
        if check_result:
            name = record["name"].split("!", 1)[-1]
            results[name] = check_result
    return results


@contextmanager
def running_icinga(base: Path, config: Path, plugins: Path,
                   agent: Optional[Agent] = None) -> Iterator[subprocess.Popen[bytes]]:
    icinga2 = require("icinga2")
    agent = agent or here()
    log = (base / "daemon.out").open("wb")
    process = subprocess.Popen(
        agent.argv([icinga2, "daemon", "-c", str(config),
                    *icinga_defines(base, plugins, agent)]),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield process
    finally:
        _stop(process)
        log.close()


def run_icinga_checks(
    base: Path, services: dict[str, dict[str, Any]], timeout: float = 45.0, *,
    plugins: Optional[Path] = None, includes: Optional[list[str]] = None,
    agent: Optional[Agent] = None,
) -> dict[str, dict[str, Any]]:
    """Start Icinga 2 with these services, wait until each has run twice, stop, return results.

    A PerfdataWriter tells when checks have run (it writes while the daemon runs); the state
    file, written at shutdown, has the exact exit status, output and parsed perfdata. By default
    PluginDir holds this tree's check_qcow2 and the shipped CheckCommand file is included.
    """
    plugins = plugins or plugin_dir(base)
    config = icinga_config(base, services, includes)
    perf_dir = base / "perfdata"
    perf_dir.mkdir()
    with config.open("a") as handle:
        handle.write(
            'object PerfdataWriter "perfdata" {\n'
            f"  service_perfdata_path = {icinga_string(str(perf_dir / 'service-perfdata'))}\n"
            f"  host_perfdata_path = {icinga_string(str(perf_dir / 'host-perfdata'))}\n"
            # Files are written under the temp paths and moved on rotation.
            f"  service_temp_path = {icinga_string(str(base / 'service-perfdata.tmp'))}\n"
            f"  host_temp_path = {icinga_string(str(base / 'host-perfdata.tmp'))}\n"
            '  service_format_template = "SERVICE::$service.name$\\tSTATE::$service.state_id$"\n'
            "  rotation_interval = 1s\n"
            "}\n"
        )
    checked = icinga_validate(config, base, plugins, agent)
    assert checked.returncode == 0, f"icinga2 daemon -C failed:\n{checked.stdout}{checked.stderr}"

    def seen_all() -> bool:
        counts = dict.fromkeys(services, 0)
        for file in perf_dir.glob("service-perfdata*"):
            for line in file.read_text(errors="replace").splitlines():
                name = line.split("\t", 1)[0].removeprefix("SERVICE::")
                if name in counts:
                    counts[name] += 1
        # Twice: the first result may still be in flight to the state when we stop.
        return all(count >= 2 for count in counts.values())

    with running_icinga(base, config, plugins, agent) as process:
        try:
            wait_for(lambda: seen_all() or process.poll() is not None, timeout, "Icinga checks")
        except AssertionError:
            raise AssertionError(
                "Icinga did not run every check in time; daemon output:\n"
                + (base / "daemon.out").read_text(errors="replace")[-4000:]
            ) from None
        assert process.poll() is None, (base / "daemon.out").read_text(errors="replace")
    state = base / "data" / "icinga2.state"
    assert state.exists(), (base / "daemon.out").read_text(errors="replace")[-4000:]
    return read_icinga_state(state)


# --- Nagios Core 4 --------------------------------------------------------------------------


def nagios_config(base: Path, object_files: list[Path], plugins: Path,
                  agent: Optional[Agent] = None, object_dirs: tuple[Path, ...] = ()) -> Path:
    """nagios.cfg overriding every path, running as the current user (or the agent's),
    checking quickly; `object_dirs` are read as Debian's nagios.cfg reads its cfg_dir."""
    user, group = (agent.user, agent.group) if agent else _user()
    (base / "spool" / "checkresults").mkdir(parents=True)
    (base / "rw").mkdir()
    resource = base / "resource.cfg"
    resource.write_text(f"$USER1$={plugins}\n")
    settings = {
        "log_file": base / "nagios.log",
        "status_file": base / "status.dat",
        "object_cache_file": base / "objects.cache",
        "precached_object_file": base / "objects.precache",
        "temp_file": base / "nagios.tmp",
        "temp_path": base,
        "lock_file": base / "nagios.lock",
        "check_result_path": base / "spool" / "checkresults",
        "query_socket": base / "rw" / "nagios.qh",
        "command_file": base / "rw" / "nagios.cmd",
        "state_retention_file": base / "retention.dat",
        "debug_file": base / "nagios.debug",
        "resource_file": resource,
        "nagios_user": user,
        "nagios_group": group,
        "check_for_updates": 0,
        "check_external_commands": 0,
        "interval_length": 1,
        "status_update_interval": 1,
        "check_result_reaper_frequency": 1,
        "service_inter_check_delay_method": "n",
        "host_inter_check_delay_method": "n",
        "max_service_check_spread": 1,
        "retain_state_information": 0,
        "use_syslog": 0,
        "enable_notifications": 0,
    }
    lines = [f"cfg_file={path}" for path in object_files]
    lines += [f"cfg_dir={path}" for path in object_dirs]
    lines += [f"{key}={value}" for key, value in settings.items()]
    config = base / "nagios.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def nagios_objects(base: Path, services: dict[str, str]) -> Path:
    """Host, contact, time period and one service per (description -> check_command)."""
    text = """\
define timeperiod {
    timeperiod_name 24x7
    alias           always
    sunday          00:00-24:00
    monday          00:00-24:00
    tuesday         00:00-24:00
    wednesday       00:00-24:00
    thursday        00:00-24:00
    friday          00:00-24:00
    saturday        00:00-24:00
}
define command {
    command_name    notify-nobody
    command_line    /bin/true
}
define contact {
    contact_name                    nobody
    host_notifications_enabled      0
    service_notifications_enabled   0
    host_notification_period        24x7
    service_notification_period     24x7
    host_notification_options       n
    service_notification_options    n
    host_notification_commands      notify-nobody
    service_notification_commands   notify-nobody
}
define host {
    host_name               qcow2-host
    address                 127.0.0.1
    max_check_attempts      1
    check_period            24x7
    active_checks_enabled   0
    contacts                nobody
    notification_period     24x7
}
"""
    for description, command in services.items():
        text += f"""\
define service {{
    host_name               qcow2-host
    service_description     {description}
    check_command           {command}
    max_check_attempts      1
    check_interval          1
    retry_interval          1
    check_period            24x7
    contacts                nobody
    notification_period     24x7
}}
"""
    path = base / "objects.cfg"
    path.write_text(text)
    return path


def nagios_verify(config: Path, agent: Optional[Agent] = None) -> subprocess.CompletedProcess[str]:
    nagios4 = require("nagios4")
    agent = agent or here()
    agent.own(config.parent)
    return subprocess.run(agent.argv([nagios4, "-v", str(config)]),
                          capture_output=True, text=True, timeout=60, check=False)


def read_nagios_status(path: Path) -> dict[str, dict[str, str]]:
    """servicestatus blocks of status.dat by service description."""
    services: dict[str, dict[str, str]] = {}
    block: Optional[dict[str, str]] = None
    for line in path.read_text(errors="replace").splitlines():
        stripped = line.strip()
        if stripped == "servicestatus {":
            block = {}
        elif stripped == "}" and block is not None:
            services[block.get("service_description", "")] = block
            block = None
        elif block is not None and "=" in stripped:
            key, value = stripped.split("=", 1)
            block[key] = value
    return services


def run_nagios_checks(
    base: Path, config: Path, descriptions: list[str], timeout: float = 45.0,
    agent: Optional[Agent] = None,
) -> dict[str, dict[str, str]]:
    """Run nagios4 until every service has a check result in status.dat, then stop it."""
    nagios4 = require("nagios4")
    agent = agent or here()
    agent.own(base)
    status = base / "status.dat"
    log = (base / "daemon.out").open("wb")
    process = subprocess.Popen(agent.argv([nagios4, str(config)]), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    result: dict[str, dict[str, str]] = {}

    def all_checked() -> bool:
        nonlocal result
        if process.poll() is not None or not status.exists():
            return process.poll() is not None
        result = read_nagios_status(status)
        return all(result.get(d, {}).get("has_been_checked") == "1" for d in descriptions)

    try:
        try:
            wait_for(all_checked, timeout, "Nagios checks")
        except AssertionError:
            raise AssertionError(
                "Nagios did not run every check in time; log:\n"
                + (base / "nagios.log").read_text(errors="replace")[-4000:]
            ) from None
        assert process.poll() is None, (base / "nagios.log").read_text(errors="replace")[-4000:]
    finally:
        _stop(process)
        log.close()
    return result
