"""Nagios Core 4 accepts the shipped command definitions (included verbatim) and runs them.

`nagios4 -v` validates a temp nagios.cfg that includes nagios/qcow2.conf with a service per
shipped command; then the daemon itself runs those services and status.dat shows the states.
"""

from __future__ import annotations

import re
from pathlib import Path

from daemons import make_image, own_filesystem
from nagios_daemons import (
    NAGIOS_CONF,
    nagios_config,
    nagios_objects,
    nagios_verify,
    plugin_dir,
    run_nagios_checks,
)


def _shipped_commands() -> list[str]:
    return re.findall(r"^\s*command_name\s+(\S+)", NAGIOS_CONF.read_text(), re.M)


def test_shipped_definitions_validate(tmp_path: Path) -> None:
    commands = _shipped_commands()
    assert commands == ["check_qcow2", "check_qcow2_headroom", "check_qcow2_full",
                        "check_qcow2_overcommit", "check_qcow2_running", "check_qcow2_thin",
                        "check_qcow2_args"]
    services = {
        "usage": "check_qcow2!/var/lib/libvirt/images!80!90",
        "headroom": "check_qcow2_headroom!/var/lib/libvirt/images/*.qcow2!20G!5G",
        "full": "check_qcow2_full!/var/lib/libvirt/images!80!90",
        "overcommit": "check_qcow2_overcommit!/var/lib/libvirt/images!1.5!3",
        "running": "check_qcow2_running!80!90",
        "thin": "check_qcow2_thin!24h!4h",
        "args": "check_qcow2_args!-f /images --critical-headroom 5G --dirty-state critical",
    }
    objects = nagios_objects(tmp_path, services)
    config = nagios_config(tmp_path, [NAGIOS_CONF, objects], plugin_dir(tmp_path))
    checked = nagios_verify(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"Checked 7 services\.", checked.stdout), checked.stdout
    assert "Total Errors:   0" in checked.stdout


def test_validation_has_teeth(tmp_path: Path) -> None:
    """A control: the same setup with a service naming an undefined command is refused."""
    objects = nagios_objects(tmp_path, {"broken": "check_qcow2_nonexistent!x"})
    config = nagios_config(tmp_path, [NAGIOS_CONF, objects], plugin_dir(tmp_path))
    checked = nagios_verify(config)
    assert checked.returncode != 0
    assert "check_qcow2_nonexistent" in checked.stdout


def test_daemon_runs_the_shipped_commands(tmp_path: Path) -> None:
    images = tmp_path / "my images"  # a space: the definitions' quoting must hold
    # Its own small filesystem: the usage thresholds must not depend on the build disk.
    with own_filesystem(images):
        _run_in(tmp_path, images)


def _run_in(tmp_path: Path, images: Path) -> None:
    plain = make_image(images / "plain.qcow2", "64M", write=["write -P 1 0 2M"])
    (images / "notes.txt").write_text("not an image\n")
    services = {
        "ok": f"check_qcow2!{plain}!80!90",
        "warning": f"check_qcow2!{images}!0.0000001!99",
        "headroom": f"check_qcow2_headroom!{images}/*.qcow2!1P!1K",
        "full": f"check_qcow2_full!{plain}!80!90",
        "unknown": f"check_qcow2_args!-f '{images}/notes.txt'",
        # 64 MiB virtual on a small filesystem: above a tiny ratio, below a huge one.
        "overcommit": f"check_qcow2_overcommit!{images}!0.000001!1000000",
    }
    objects = nagios_objects(tmp_path, services)
    config = nagios_config(tmp_path, [NAGIOS_CONF, objects], plugin_dir(tmp_path))
    checked = nagios_verify(config)
    assert checked.returncode == 0, checked.stdout
    status = run_nagios_checks(tmp_path, config, list(services))

    def state(name: str) -> tuple[str, str, str]:
        block = status[name]
        return block["current_state"], block["plugin_output"], block["performance_data"]

    code, output, perf = state("ok")
    assert code == "0" and output.startswith(f"QCOW2 OK - {plain}: usage "), output
    assert perf.startswith(f"'{plain} usage_percent'=") and ";80;90;0;100 " in perf
    code, output, _ = state("warning")
    assert code == "1" and output.startswith(f"QCOW2 WARNING - {plain}: usage "), output
    code, output, perf = state("headroom")
    assert code == "1" and output.startswith(f"QCOW2 WARNING - {plain}: headroom "), output
    assert ";1125899906842624:;1024:;0;" in perf
    code, output, perf = state("full")
    assert code == "0", output
    assert f"'{plain} leaks'=0;;;0" in perf  # --check ran: its figures are graphed
    code, output, perf = state("overcommit")
    assert code == "1", output
    assert output.startswith(f"QCOW2 WARNING - filesystem {images}: overcommit "), output
    assert f"'{images} overcommit_ratio'=" in perf and ";0.000001;1000000;0" in perf
    code, output, perf = state("unknown")
    assert (code, perf) == ("3", "")
    assert output == (f"QCOW2 UNKNOWN - {images}/notes.txt: header at offset 0x0: not a qcow2 "
                      "image (bad magic)")
