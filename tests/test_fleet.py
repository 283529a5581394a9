"""The shipped alert rules and the README's fleet queries on a real Prometheus server.

Two hypervisors, each a real node_exporter (its own port, so its own `instance` label) reading
a textfile that qcow2-textfile rewrites between scrapes from real images; one Prometheus server
(Debian's) scrapes both every second and evaluates the shipped rules, installed as an operator
installs them (`qcow2-analyze config qcow2.rules.yml`) with their windows and `for:` shortened
through the rules' own parameters (`--set`). Every shipped alert is seen firing when it should,
then resolving; at the end the server's own ALERTS series show that nothing else was ever even
pending. Which alert fires for what is written down here by hand, from what each image was
made to be; the figures the fleet queries must return come from qemu-img.

hv1 (qcow2-textfile as root, with --check and a QMP live source):
  web      healthy, 4 MiB written
  damaged  a refcount table entry patched off its cluster: Qcow2ImageCritical (rule damaged)
  leaky    the header cluster counted twice: Qcow2ImageWarning (rule leaks, found by --check)
  vm1      an overlay a running qemu holds, restarted around `qemu-img amend` and `rebase`
  loop A   a 64 MiB block device holding a 256 MiB thin image that the test fills by writing
           into it: the fill-up prediction, below the extension watermark (less than 32 MiB
           left, chunk 64 MiB), then nearly full
  loop B   a 16 MiB block device holding a 15 MiB image written full: over 90 % used, but its
           fully allocated size fits: never an alert
hv2 (qcow2-textfile and node_exporter as nobody; Debian runs the exporter unprivileged too):
  pool     a 64 MiB tmpfs over 90 % used by a filler file, holding db (48 MiB virtual) and app
           (64 MiB): both nearly full, the filesystem overcommitted
  secret   an image nobody may read: Qcow2ImageUnknown (rule unknown)
  other.prom  a textfile nobody may read (root's, 0600): Qcow2TextfileUnreadable
  and its writer stopped for a while: Qcow2TextfileStale
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemons import (
    Prometheus,
    as_user,
    make_image,
    node_exporter,
    own_filesystem,
    prometheus,
    require_binary,
    run,
)
from damage import patch_u64, read_header, read_u64, set_refcount
from fleet import Alert, Host, Writer, active_alerts, alert_of, wait_alerts, wait_for
from live_daemons import QemuQmp, start_qemu_qmp, stop_qemu
from readback import textfile_samples
from tree import BIN, SYSTEM_PYTHON, source_site

MiB = 1024**2
# The rules as an operator would install them on a test server: every `for:` 2 s, the fill-up
# trend over 10 s, stale after 15 s without a successful run (shipped: 5m..1h, 6h, 10m).
RULE_SETTINGS = ("for=2s", "trend_window=10s", "stale_after=15s")
STALE_AFTER = 15
LOOP_A_SIZE = 64 * MiB
CRITICAL, WARNING, UNKNOWN = "Qcow2ImageCritical", "Qcow2ImageWarning", "Qcow2ImageUnknown"
FILLS_UP, NEARLY_FULL = "Qcow2ContainerFillsUpWithin24h", "Qcow2ContainerNearlyFull"
WATERMARK = "Qcow2VolumeBelowWatermark"
OVERCOMMITTED = "Qcow2FilesystemOvercommitted"
STALE, UNREADABLE = "Qcow2TextfileStale", "Qcow2TextfileUnreadable"


@dataclass
class Fleet:
    prom: Prometheus
    hv1: Host
    hv2: Host
    disks: dict[str, str]  # name -> the disk's path label
    vms: list[QemuQmp]  # vm1's qemu, one per start: the last one runs
    qmp_dir: Path
    pool: Path
    damage: tuple[int, int]  # where the patch is, and the value it replaced
    started: float  # wall clock, before the first scrape

    @property
    def hosts(self) -> dict[str, str]:
        """instance label -> host name."""
        return {host.instance: host.name for host in (self.hv1, self.hv2)}

    @property
    def vm(self) -> QemuQmp:
        return self.vms[-1]

    def alert(self, name: str, host: str, disk: str = "", rule: str = "") -> Alert:
        return Alert(name, host, self.disks.get(disk, disk), rule)


def qemu_img(*args: str) -> list[str]:
    return [require_binary("qemu-img"), *args]


def end_offset(image: str) -> int:
    """qemu-img's image end offset (-U: a running qemu may hold the image)."""
    proc = subprocess.run(qemu_img("check", "-U", "--output=json", image), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.startswith("{"), (image, proc.stderr[-300:])
    return int(json.loads(proc.stdout)["image-end-offset"])


def _hv1_images(d: Path, loop_device: Any) -> tuple[dict[str, str], tuple[int, int]]:
    """hv1's disks (name -> path label), and where `damaged` was patched with what value."""
    web = make_image(d / "web.qcow2", "64M", write=["write 0 4M"])
    damaged = make_image(d / "damaged.qcow2", "16M")
    table = read_header(damaged)["refcount_table_offset"]
    first_block = read_u64(damaged, table)
    patch_u64(damaged, table, first_block + 512)  # not cluster aligned: damaged metadata
    leaky = make_image(d / "leaky.qcow2", "16M", write=["write 0 1M"])
    set_refcount(leaky, 0, 2)  # the header cluster counted twice, used once: a leak
    base1 = make_image(d / "base1.qcow2", "32M", write=["write -P 1 0 1M"])
    shutil.copyfile(base1, d / "base2.qcow2")
    vm1 = make_image(d / "vm1.qcow2", backing=base1, write=["write -P 2 1M 1M"])
    # Block devices: a qcow2 file padded to the device size, attached as a loop device.
    loop_a = make_image(d / "a.img", "256M", write=["write 0 28M"])
    os.truncate(loop_a, LOOP_A_SIZE)
    loop_b = make_image(d / "b.img", "15M", write=["write 0 15M"])
    os.truncate(loop_b, 16 * MiB)
    named = {"web": web, "damaged": damaged, "leaky": leaky, "vm1": vm1}
    disks = {name: str(path.resolve()) for name, path in named.items()}
    return {**disks, "loop A": loop_device(loop_a), "loop B": loop_device(loop_b)}, \
        (table, first_block)


def _hv2_images(pool: Path) -> dict[str, str]:
    db = make_image(pool / "db.qcow2", "48M", write=["write 0 24M"])
    app = make_image(pool / "app.qcow2", "64M", write=["write 0 2M"])
    secret = make_image(pool / "secret.qcow2", "8M")
    for image, mode in ((db, 0o644), (app, 0o644), (secret, 0o600)):
        image.chmod(mode)  # root's: nobody reads db and app, not secret
    st = os.statvfs(pool)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    (pool / "filler").write_bytes(b"\xff" * (int(st.f_blocks * st.f_frsize * 0.93) - used))
    return {name: str((pool / f"{name}.qcow2").resolve()) for name in ("db", "app", "secret")}


def _start_hosts(stack: ExitStack, tmp: Path, shared: Path, disks: dict[str, str],
                 qmp: Path) -> tuple[Host, Host]:
    text1 = tmp / "hv1-textfile"
    text1.mkdir()
    exporter1 = stack.enter_context(node_exporter(text1, tmp / "ne1"))
    # Loop A is due for extension (chunk 64 MiB at 50 %) once less than 32 MiB is left.
    writer1 = Writer("hv1", [str(BIN / "qcow2-textfile"), "--check", "--qmp", str(qmp),
                             "--extend-chunk", "64M", "--output", str(text1 / "qcow2.prom"),
                             *(disks[name] for name in ("web", "damaged", "leaky", "vm1",
                                                        "loop A", "loop B"))])
    stack.callback(writer1.close)
    text2 = shared / "textfile"
    text2.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(text2, nobody.pw_uid, nobody.pw_gid)
    exporter2 = stack.enter_context(node_exporter(text2, tmp / "ne2", enter=as_user("nobody")))
    site = source_site()
    writer2 = Writer("hv2", [SYSTEM_PYTHON, "-m", "qcow2_monitor.node_exporter_textfile."
                             "qcow2_textfile", "--output", str(text2 / "qcow2.prom"),
                             str(shared / "pool")],
                     user="nobody", env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                     cwd=site)
    stack.callback(writer2.close)
    return (Host("hv1", exporter1, writer1, text1 / "qcow2.prom"),
            Host("hv2", exporter2, writer2, text2 / "qcow2.prom"))


@pytest.fixture
def fleet(tmp_path: Path, loop_device: Any) -> Iterator[Fleet]:
    with ExitStack() as stack:
        rules = tmp_path / "qcow2.rules.yml"  # installed as the README says, with --set
        rules.write_text(run([str(BIN / "qcow2-analyze"), "config", "qcow2.rules.yml",
                              *(f"--set={setting}" for setting in RULE_SETTINGS)]).stdout)
        hv1_dir = stack.enter_context(own_filesystem(tmp_path / "hv1", "256m"))
        disks, damage = _hv1_images(hv1_dir, loop_device)
        # hv2 runs as nobody: its directories must be reachable (tmp_path is root's alone).
        shared = Path(tempfile.mkdtemp(prefix="qcow2-fleet-"))
        stack.callback(shutil.rmtree, shared, True)
        shared.chmod(0o755)
        pool = stack.enter_context(own_filesystem(shared / "pool", "64m"))
        disks.update(_hv2_images(pool))
        qmp_dir = tmp_path / "qmp"
        qmp_dir.mkdir()
        vms = [start_qemu_qmp(qmp_dir, Path(disks["vm1"]))]
        stack.callback(lambda: [stop_qemu(vm) for vm in vms])
        started = time.time()
        hv1, hv2 = _start_hosts(stack, tmp_path, shared, disks, vms[0].socket)
        prom = stack.enter_context(prometheus(tmp_path / "prometheus",
                                              [hv1.instance, hv2.instance], rules))
        yield Fleet(prom, hv1, hv2, disks, vms, qmp_dir, pool, damage, started)


# --- the alerts -----------------------------------------------------------------------------


def _alerts_as_made(f: Fleet) -> set[Alert]:
    """The alerts of the images as made (by hand, from what each image was made to be)."""
    return {
        f.alert(CRITICAL, "hv1", "damaged", "damaged"),
        f.alert(WARNING, "hv1", "leaky", "leaks"),
        f.alert(UNKNOWN, "hv2", "secret", "unknown"),
        f.alert(NEARLY_FULL, "hv2", "db"),
        f.alert(NEARLY_FULL, "hv2", "app"),
        f.alert(OVERCOMMITTED, "hv2", str(f.pool)),
    }


def _initial_alerts(f: Fleet) -> None:
    """The images as made: exactly these fire, with the labels and texts an operator reads."""
    wait_alerts(f.prom, f.hosts, _alerts_as_made(f), "the alerts of the images as made")
    shown = {alert_of(a["labels"], f.hosts): a for a in f.prom.alerts()}
    critical = shown[f.alert(CRITICAL, "hv1", "damaged", "damaged")]
    damaged, db = f.disks["damaged"], f.disks["db"]
    assert critical["labels"]["severity"] == "critical"
    assert critical["labels"]["job"] == "node"
    assert critical["annotations"]["summary"] == f"qcow2 image {damaged}: damaged"
    assert f"'damaged' is critical for {damaged} on {f.hv1.instance} " in \
        critical["annotations"]["description"]
    full = shown[f.alert(NEARLY_FULL, "hv2", "db")]
    assert full["labels"]["severity"] == "critical"
    assert full["annotations"]["summary"] == f"qcow2 container nearly full: {db}"
    assert re.match(rf"The container of {re.escape(db)} on {re.escape(f.hv2.instance)} is "
                    r"9\d(\.\d+)?% used; ", full["annotations"]["description"])
    assert shown[f.alert(UNKNOWN, "hv2", "secret", "unknown")]["labels"]["severity"] \
        == "warning"
    # Nothing is wrong with the textfiles themselves.
    errors = {r["metric"]["instance"]: r["value"][1]
              for r in f.prom.query("node_textfile_scrape_error")}
    assert errors == {f.hv1.instance: "0", f.hv2.instance: "0"}


def _repairs(f: Fleet) -> None:
    """Each cause removed as an operator would: every alert resolves."""
    table, first_block = f.damage
    with f.hv1.writer.between_runs():
        patch_u64(f.disks["damaged"], table, first_block)  # restored from a backup
        run(qemu_img("check", "-q", "-r", "leaks", f.disks["leaky"]))
    with f.hv2.writer.between_runs():
        Path(f.disks["secret"]).chmod(0o644)
        (f.pool / "filler").unlink()
        Path(f.disks["app"]).unlink()  # db alone: 48 MiB of virtual size on 64 MiB
    wait_alerts(f.prom, f.hosts, set(), "every alert resolved after the repairs")


def _first_active(f: Fleet, alert: Alert) -> float:
    """When the server first found the alert's condition true (its oldest ALERTS sample)."""
    selector = f'ALERTS{{alertname="{alert.name}",path="{alert.subject}"}}'
    samples = [float(t) for series in f.prom.api("query", query=f"{selector}[10m]")["result"]
               for t, _ in series["values"]]
    assert samples, selector
    return min(samples)


def _ratio_at(f: Fleet, expr: str, at: float) -> float:
    (result,) = f.prom.query(expr, at)
    return float(result["value"][1])


def _grow_loop_a(f: Fleet, step: int, until: int) -> None:
    """Up to `step` more bytes written into loop A's image between two runs of hv1's writer,
    as long as qemu's image end offset stays under `until`; then one run."""
    loop_a = f.disks["loop A"]
    with f.hv1.writer.between_runs():
        end = end_offset(loop_a)
        size = min(step, until - end) // 512 * 512
        if size > 0:
            run([require_binary("qemu-io"), "-f", "qcow2", "-c", f"write -P 9 {end} {size}",
                 loop_a])
    f.hv1.writer.wait_runs()


def _fill_loop_a(f: Fleet) -> None:
    """Loop A's image grows run after run: the fill-up prediction fires once less than 40 % of
    the device is left, not before; nearly full fires past 90 %, not before."""
    fills_up = f.alert(FILLS_UP, "hv1", "loop A")
    headroom = (f'qcow2_headroom_bytes{{path="{fills_up.subject}"}} / '
                f'qcow2_container_size_bytes{{path="{fills_up.subject}"}}')

    def fires(alert: Alert) -> bool:
        return active_alerts(f.prom, f.hosts).get(alert) == "firing"

    while end_offset(f.disks["loop A"]) < 36 * MiB:
        _grow_loop_a(f, 4 * MiB, 40 * MiB)
    # A MiB a run from here on, so that it keeps growing for longer than `for:` past 60 %.
    wait_for("the fill-up prediction", lambda: fires(fills_up) or
             _grow_loop_a(f, MiB, 56 * MiB), bool)
    # The condition first held when less than 40 % was left (the headroom only falls, so
    # the sample at that time is at most what the rule saw).
    assert _ratio_at(f, headroom, _first_active(f, fills_up)) < 0.4
    nearly_full = f.alert(NEARLY_FULL, "hv1", "loop A")
    assert not fires(nearly_full)
    while end_offset(f.disks["loop A"]) < int(0.92 * LOOP_A_SIZE):
        _grow_loop_a(f, 4 * MiB, 61 * MiB)
    wait_for("nearly full", lambda: fires(nearly_full), bool)
    usage = f'qcow2_usage_ratio{{path="{nearly_full.subject}"}}'
    assert _ratio_at(f, usage, _first_active(f, nearly_full)) > 0.9


def _growth_and_stale_textfile(f: Fleet) -> Path:
    """hv2's writer stops and an unreadable textfile appears there while loop A fills up: each
    alert fires. Returns the unreadable file."""
    f.hv2.writer.enabled.clear()
    with f.hv2.writer.between_runs():  # its last run is over
        stopped = time.time()
        other = f.hv2.textfile.parent / "other.prom"
        other.write_text("other_metric 1\n")
        other.chmod(0o600)  # root's: node_exporter, as nobody, cannot read it
    _fill_loop_a(f)
    stale = f.alert(STALE, "hv2")
    wait_for("the stale and the unreadable textfile",
             lambda: active_alerts(f.prom, f.hosts),
             lambda got: got.get(stale) == got.get(f.alert(UNREADABLE, "hv2")) == "firing")
    (alert,) = [a for a in f.prom.alerts() if a["labels"]["alertname"] == STALE]
    assert float(alert["value"]) > STALE_AFTER  # the age of hv2's last successful run
    (last,) = f.prom.query("qcow2_last_success_timestamp_seconds"
                           f'{{instance="{f.hv2.instance}"}}')
    assert float(last["value"][1]) <= stopped
    return other


def _resolutions(f: Fleet, other: Path) -> None:
    """Each cause goes: the prediction resolves once loop A's trend is flat (it stopped
    growing before _no_churn), the stale and the unreadable textfile once hv2's writer runs
    again and the file is gone, nearly full once the volume is provisioned anew."""
    other.unlink()
    f.hv2.writer.enabled.set()
    wait_alerts(f.prom, f.hosts, {f.alert(NEARLY_FULL, "hv1", "loop A"),
                                  f.alert(WATERMARK, "hv1", "loop A")},
                "the prediction, the stale and the unreadable textfile resolved")
    with f.hv1.writer.between_runs():
        run(qemu_img("create", "-q", "-f", "qcow2", f.disks["loop A"], "256M"))
    wait_alerts(f.prom, f.hosts, set(), "nearly full resolved")


def _alerts_ever(f: Fleet) -> None:
    """Over the whole test, no alert was ever even pending but those expected."""
    ever = {alert_of(labels, f.hosts)
            for labels in f.prom.series("ALERTS", f.started, time.time())}
    assert ever == _alerts_as_made(f) | {
        f.alert(FILLS_UP, "hv1", "loop A"),
        f.alert(NEARLY_FULL, "hv1", "loop A"),
        f.alert(WATERMARK, "hv1", "loop A"),
        f.alert(STALE, "hv2"),
        f.alert(UNREADABLE, "hv2"),
    }, ever


# --- the fleet queries ------------------------------------------------------------------------


def _restart_vm(f: Fleet, *change: str) -> dict[str, str]:
    """vm1's qemu stopped, `qemu-img change...` run on its disk, qemu started again, all
    between two runs; the image_info labels once the server has them."""
    with f.hv1.writer.between_runs():
        stop_qemu(f.vm)
        wait_for("qemu gone", lambda: _exited(f.vm.pid), bool)
        if change:
            run(qemu_img(*change, f.disks["vm1"]))
        f.vms.append(start_qemu_qmp(f.qmp_dir, Path(f.disks["vm1"])))
    domain = f"qemu {f.vm.pid}"
    found = wait_for(f"vm1 as {domain}", lambda: _info(f, "vm1"),
                     lambda got: got.get("domain") == domain)
    return found


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _info(f: Fleet, disk: str) -> dict[str, str]:
    found = f.prom.query(f'qcow2_image_info{{path="{f.disks[disk]}"}}')
    return found[0]["metric"] if len(found) == 1 else {}


def _no_churn(f: Fleet) -> None:
    """vm1 restarted, amended (lazy refcounts on) and rebased onto a copy of its base: each
    figure keeps its one series; only qcow2_image_info's descriptive labels change, one info
    series at a time."""
    since = time.time()
    first = wait_for("vm1 running", lambda: _info(f, "vm1"),
                     lambda got: got.get("domain") == f"qemu {f.vm.pid}")
    assert first["lazy_refcounts"] == "false"
    restarted = _restart_vm(f)
    amended = _restart_vm(f, "amend", "-o", "lazy_refcounts=on")
    assert amended["lazy_refcounts"] == "true"
    base2 = str(Path(f.disks["vm1"]).parent / "base2.qcow2")
    rebased = _restart_vm(f, "rebase", "-u", "-F", "qcow2", "-b", base2)
    assert (rebased["backing_file"], rebased["lazy_refcounts"]) == (base2, "true")
    seen = f.prom.series(f'{{__name__=~"qcow2_.+",path="{f.disks["vm1"]}"}}', since,
                         time.time())
    names = Counter(labels["__name__"] for labels in seen)
    assert names.pop("qcow2_image_info") == 4  # as started, restarted, amended, rebased
    assert set(names.values()) == {1}, names
    assert {first["domain"], restarted["domain"], amended["domain"], rebased["domain"]} == \
        {f"qemu {vm.pid}" for vm in f.vms}
    most = f.prom.query(f'max_over_time(count by (instance, path) '
                        f'(qcow2_image_info{{path="{f.disks["vm1"]}"}})'
                        f'[{int(time.time() - since) + 1}s:1s])')
    assert [r["value"][1] for r in most] == ["1"]


def _by(results: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in results}


def _fleet_queries(f: Fleet) -> None:
    """The README's fleet queries, against qemu-img's figures of every disk."""
    hosts = {"hv1": ("web", "damaged", "leaky", "vm1", "loop A", "loop B"),
             "hv2": ("db", "secret")}
    instance = {"hv1": f.hv1.instance, "hv2": f.hv2.instance}
    # vm1's end offset is qemu's live one when that is ahead of its on-disk figure.
    end = {(instance[host], f.disks[disk]): end_offset(f.disks[disk])
           for host, disks in hosts.items() for disk in disks}
    live = (f.hv1.instance, f.disks["vm1"])
    end[live] = max(end[live], f.vm.wr_highest_offset())
    per_host = {(i,): float(sum(v for (h, _), v in end.items() if h == i))
                for i in instance.values()}
    wait_for("per-host sums", lambda: _by(f.prom.query(
        "sum by (instance) (qcow2_end_offset_bytes)"), "instance"), lambda got: got == per_host)
    virtual = _by(f.prom.query("sum by (instance) (qcow2_virtual_size_bytes)"), "instance")
    assert virtual == {(f.hv1.instance,): (64 + 16 + 16 + 32 + 256 + 15) * MiB,
                       (f.hv2.instance,): (48 + 8) * MiB}
    top = _by(f.prom.query("topk(3, qcow2_end_offset_bytes)"), "instance", "path")
    assert top == dict(sorted(end.items(), key=lambda item: -item[1])[:3])
    joined = _by(f.prom.query("qcow2_end_offset_bytes * on (instance, path) "
                              "group_left (domain) qcow2_image_info{domain!=\"\"}"),
                 "instance", "path", "domain")
    assert joined == {(*live, f"qemu {f.vm.pid}"): end[live]}
    assert f.prom.query("count by (instance, path) (qcow2_end_offset_bytes) > 1") == []
    assert set(_by(f.prom.query("count by (instance, path) (qcow2_end_offset_bytes)"),
                   "instance", "path")) == set(end)
    per_disk = _by(f.prom.query('count by (instance, path) ({__name__=~"qcow2_.+",path!=""})'),
                   "instance", "path")
    for host in (f.hv1, f.hv2):  # all the textfile has, nothing added
        with host.writer.between_runs():
            text = host.textfile.read_text()
        in_file = Counter(labels["path"] for _, labels, _ in textfile_samples(text)
                          if "path" in labels)
        assert {path: per_disk[(host.instance, path)] for path in in_file} == in_file
    # By hand (no health rule applies now, no growth history yet, no extension due): an image
    # file has 12 figures (image_end_offset, end_offset, container_size, headroom, usage_ratio,
    # fully_allocated_size, virtual_size, allocated, in_use, snapshots, bitmaps,
    # free_below_end; a block device 11, no allocated_bytes), plus health, scrape_error and
    # image_info: 15 (14). --check (hv1) adds 7 (check_errors, corruptions, leaks,
    # allocated_clusters, fragmented_clusters, compressed_clusters, unconfirmed): 22 (21); the
    # live source (vm1) live_end_offset_bytes: 23. hv2 has neither: 15.
    assert per_disk == {**{(f.hv1.instance, f.disks[disk]): 22 for disk in ("web", "damaged",
                                                                          "leaky")},
                        (f.hv1.instance, f.disks["vm1"]): 23,
                        **{(f.hv1.instance, f.disks[disk]): 21 for disk in ("loop A", "loop B")},
                        **{(f.hv2.instance, f.disks[disk]): 15 for disk in ("db", "secret")}}


def test_alerts_and_fleet_queries_on_a_real_prometheus(fleet: Fleet) -> None:
    _initial_alerts(fleet)
    _repairs(fleet)
    unreadable = _growth_and_stale_textfile(fleet)
    _no_churn(fleet)  # meanwhile loop A's trend flattens
    _resolutions(fleet, unreadable)
    _fleet_queries(fleet)
    _alerts_ever(fleet)
    for host in (fleet.hv1, fleet.hv2):
        host.writer.check()
