"""The Debian package: built from this tree with the standard tools (dpkg-buildpackage, pybuild
from pyproject.toml), checked by lintian, installed as an operator installs it
(`apt-get install ./qcow2-monitor_*.deb`, so that apt resolves its dependencies) into the
isolated root of tests/debian_root.py: the host's /etc, /usr and /var are never written, and
the agents' users exist there only.

Then only installed paths are used, on what Debian's libvirt makes: images root:root 0600 in
a root:root 0711 /var/lib/libvirt/images. check_qcow2 from /usr/lib/nagios/plugins runs inside
the real nagios4 (the packaged /etc/nagios-plugins/config/qcow2.cfg, read as cfg_dir the way
Debian's nagios.cfg reads it) and Icinga 2 (the packaged CheckCommand, through
`include <plugins-contrib>` as Debian's icinga2.conf has it), both running as nagios; the
Telegraf snippets' command lines run as telegraf; the textfile service's ExecStart line (there
is no systemd here) writes the file a real node_exporter, running as prometheus, serves. Each
has a control run without sudo, which the same user's permissions refuse. The sudoers rules
are checked option by option with the real sudo. Last, an upgrade that keeps the admin's edit
of a conffile, and a purge that leaves nothing but dpkg's own records.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qcow2_monitor.collectors.report.state import SYSTEM_STATE_DIRECTORY
from qcow2_monitor.nagios.options import build_parser
from qcow2_monitor.telegraf.qcow2_telegraf import _parser as telegraf_parser

from daemons import node_exporter
from debian_root import IsolatedRoot, isolated_root
from nagios_daemons import (
    Agent,
    nagios_config,
    nagios_objects,
    nagios_verify,
    run_icinga_checks,
    run_nagios_checks,
)
from tree import NOT_IN_A_CLEAN_TREE, REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the CI runs 3.11
    import tomli as tomllib

PACKAGE = "qcow2-monitor"
PLUGINS = "/usr/lib/nagios/plugins"
PLUGIN = f"{PLUGINS}/check_qcow2"
TELEGRAF = "/usr/bin/qcow2-telegraf"
EXAMPLES = f"/usr/share/doc/{PACKAGE}/examples"
SERVICE = "/lib/systemd/system/prometheus-node-exporter-qcow2.service"
TIMER = "/lib/systemd/system/prometheus-node-exporter-qcow2.timer"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
IMAGES = "/var/lib/libvirt/images"
SIZES = {"a.qcow2": 64 * 1024**2, "b.qcow2": 32 * 1024**2}
# Not part of a clean tree: earlier builds, caches, and what a dpkg-buildpackage run in the
# tree leaves behind.
IGNORED = (*NOT_IN_A_CLEAN_TREE, ".pybuild", ".debhelper", "debhelper-build-stamp", "*.substvars",
           "files", PACKAGE)
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def _tail(text: str, limit: int = 3000) -> str:
    return text[-limit:]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dpkg-buildpackage -b from a clean copy of the tree; the directory holding its outputs.

    PATH is Debian's own: the package is built for Debian's python3, never for a venv's or a
    pyenv interpreter that happens to be first on the developer's PATH.
    """
    work = tmp_path_factory.mktemp("deb")
    source = work / PACKAGE
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    proc = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source,
                          env={**BUILD_ENV, "HOME": str(work)}, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)
    return work


def deb_of(built: Path) -> Path:
    (deb,) = built.glob(f"{PACKAGE}_*_all.deb")
    return deb


def test_lintian_reports_nothing(built: Path) -> None:
    """lintian on the build's .changes (the .deb and the build info), pedantic, informational
    and experimental tags included: not one tag. The one override
    (debian/qcow2-monitor.lintian-overrides) says why a plugin lives in /usr/lib."""
    (changes,) = built.glob(f"{PACKAGE}_*.changes")
    proc = subprocess.run(["lintian", "--pedantic", "--display-info", "--display-experimental",
                           str(changes)], env=BUILD_ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[A-Z]: ", line)]
    assert tags == [], "\n".join(tags)
    assert proc.returncode == 0, _tail(proc.stdout + proc.stderr)


def prepare(root: IsolatedRoot) -> None:
    """The agents' users (created there only when the host has none) and the images as
    Debian's libvirt makes them, on a tmpfs of the namespace over /var/lib/libvirt/images."""
    for user in ("nagios", "telegraf", "prometheus"):
        root.ensure_user(user)
    root.run(["mkdir", "-p", IMAGES, TEXTFILE_DIR])
    # A fresh host has no growth samples: any the host's own runs keep are not the package's.
    root.run(["rm", "-rf", SYSTEM_STATE_DIRECTORY])
    root.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0711", "qcow2-images", IMAGES])
    for name, size in SIZES.items():
        root.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{IMAGES}/{name}", str(size)])
        root.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", f"{IMAGES}/{name}"])
        root.run(["chmod", "0600", f"{IMAGES}/{name}"])


def apt_install(root: IsolatedRoot, deb: Path) -> None:
    root.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q",
              f"./{deb.name}"], cwd=deb.parent, env={**BUILD_ENV,
                                                     "DEBIAN_FRONTEND": "noninteractive"})


@pytest.fixture(scope="module")
def installed(built: Path) -> Iterator[IsolatedRoot]:
    with isolated_root() as root:
        prepare(root)
        apt_install(root, deb_of(built))
        yield root


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    """A daemon's working directory on the host's /tmp, which the namespace shares (pytest's
    own temporary directories are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="qcow2-deb-agent-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_installed_where_each_agent_looks(installed: IsolatedRoot) -> None:
    listed = set(installed.run(["dpkg", "-L", PACKAGE]).stdout.split())
    for path in (PLUGIN, "/usr/bin/qcow2-analyze", TELEGRAF, "/usr/bin/qcow2-textfile",
                 "/etc/nagios-plugins/config/qcow2.cfg", "/etc/sudoers.d/qcow2-monitor",
                 "/usr/share/icinga2/include/plugins-contrib.d/qcow2-monitor.conf",
                 SERVICE, TIMER, f"{EXAMPLES}/telegraf/qcow2-exec.conf",
                 f"{EXAMPLES}/prometheus/qcow2.rules.yml", f"{EXAMPLES}/cron/qcow2-textfile"):
        assert path in listed, path
    assert "/usr/bin/check_qcow2" not in listed
    # The Python package is Debian's python3's, not a venv's.
    assert "/usr/lib/python3/dist-packages/qcow2_monitor/__init__.py" in listed
    # Nothing installed still waits for @BINDIR@ to be filled in (only comments name it).
    found = installed.run(["grep", "-rl", "@BINDIR@/", "/etc/nagios-plugins", "/etc/sudoers.d",
                           SERVICE, TIMER, "/usr/share/icinga2/include", EXAMPLES], check=False)
    assert found.stdout == "" and found.returncode == 1, found.stdout
    assert installed.run(["stat", "-c", "%a %U %G", "/etc/sudoers.d/qcow2-monitor"]).stdout \
        == "440 root root\n"
    assert installed.run(["visudo", "-c"]).returncode == 0
    # The timer is enabled (the first start of systemd would run it), the service is not.
    assert installed.run(["readlink", "/etc/systemd/system/timers.target.wants/"
                          "prometheus-node-exporter-qcow2.timer"]).stdout.strip() == TIMER
    verified = installed.run(["systemd-analyze", "verify", "--man=no", SERVICE, TIMER],
                             check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    version = installed.run([PLUGIN, "--version"], check=False)
    assert (version.returncode, version.stdout) == (3, "check_qcow2 0.1.0\n")


def _value(action: object) -> list[str]:
    return [] if getattr(action, "nargs", None) == 0 else ["1"]


def _allowed(root: IsolatedRoot, user: str, command: list[str]) -> bool:
    """Whether sudo lets `user` run `command` as root (sudo -l COMMAND: exit 0 when allowed)."""
    return root.run(["sudo", "-n", "-l", *command], user=user, check=False).returncode == 0


def test_sudo_allows_read_only_options_only(installed: IsolatedRoot) -> None:
    """Every option of both programs, through the real sudo: allowed, except those that would
    let the user make root connect somewhere (--libvirt-uri: a libvirt transport can run a
    command; --qmp: any unix socket) or write where the user says (--state-dir). A new option
    fails here until the rule says."""
    denied = {"--libvirt-uri", "--qmp", "--state-dir"}
    for user, program, parser in (("nagios", PLUGIN, build_parser()),
                                  ("telegraf", TELEGRAF, telegraf_parser())):
        for action in parser.argparse()._actions:
            for option in action.option_strings:
                command = [program, option, *_value(action), IMAGES]
                assert _allowed(installed, user, command) == (option not in denied), command
        for hostile in (["--libvirt-uri=qemu+ext:///system?command=/bin/sh"], ["--lib", "x"],
                        ["--qmp=/run/x"], ["-vf", IMAGES], ["--", IMAGES], [" --qmp", "x"],
                        [IMAGES, "--chain=1"]):
            assert not _allowed(installed, user, [program, *hostile]), hostile
    # Each user gets its own program only; node_exporter's user nothing.
    assert not _allowed(installed, "telegraf", [PLUGIN, IMAGES])
    assert not _allowed(installed, "nagios", [TELEGRAF, IMAGES])
    assert not _allowed(installed, "prometheus", [PLUGIN, IMAGES])
    # No environment can be passed in (e.g. PYTHONPATH to load other code as root).
    refused = installed.run(["sudo", "-n", "PYTHONPATH=/tmp", PLUGIN, IMAGES], user="nagios",
                            check=False)
    assert refused.returncode == 1 and "PYTHONPATH" in refused.stderr, refused.stderr
    # A refused option is never run: sudo says so, the plugin does not start.
    refused = installed.run(["sudo", "-n", PLUGIN, "--libvirt-uri", "qemu:///system", IMAGES],
                            user="nagios", check=False)
    assert (refused.returncode, refused.stdout) == (1, ""), refused.stdout
    assert "password is required" in refused.stderr


def test_nagios4_runs_the_packaged_commands_as_nagios(installed: IsolatedRoot,
                                                      agent_dir: Path) -> None:
    agent = Agent("nagios", "nagios", tuple(installed.enter()))
    services = {
        "usage": f"check_qcow2!{IMAGES}!80!90",
        "full": f"check_qcow2_full!{IMAGES}!80!90",
        "without sudo": f"check_qcow2_unprivileged!{IMAGES}",
    }
    objects = nagios_objects(agent_dir, services)
    with objects.open("a") as handle:  # the control: the same plugin, as nagios itself
        handle.write("define command {\n    command_name check_qcow2_unprivileged\n"
                     "    command_line $USER1$/check_qcow2 -f '$ARG1$'\n}\n")
    config = nagios_config(agent_dir, [objects], Path(PLUGINS), agent,
                           object_dirs=(Path("/etc/nagios-plugins/config"),))
    checked = nagios_verify(config, agent)
    assert checked.returncode == 0, _tail(checked.stdout)
    status = run_nagios_checks(agent_dir, config, list(services), agent=agent)
    for name in ("usage", "full"):
        block = status[name]
        assert block["current_state"] == "0", block["plugin_output"]
        assert block["plugin_output"].startswith("QCOW2 OK - 2 images"), block["plugin_output"]
        for image in SIZES:
            assert f"'{IMAGES}/{image} end_offset_bytes'=" in block["performance_data"]
    assert "'/var/lib/libvirt/images/a.qcow2 leaks'=0" in status["full"]["performance_data"]
    control = status["without sudo"]
    assert control["current_state"] == "3", control["plugin_output"]
    assert "Permission denied" in control["plugin_output"], control["plugin_output"]


def test_icinga2_runs_the_packaged_command_as_nagios(installed: IsolatedRoot,
                                                     agent_dir: Path) -> None:
    agent = Agent("nagios", "nagios", tuple(installed.enter()))
    services = {
        "sudo": {"qcow2_file": [IMAGES], "qcow2_chain": True},
        "direct": {"check_command": "qcow2-direct", "qcow2_file": [IMAGES]},
    }
    # As Debian's icinga2.conf has it: constants.conf, then the ITL's plugins-contrib include.
    includes = [f'const PluginContribDir = "{PLUGINS}"', "include <plugins>",
                "include <plugins-contrib>"]
    results = run_icinga_checks(agent_dir, services, plugins=Path(PLUGINS), includes=includes,
                                agent=agent)
    result = results["sudo"]
    assert result["command"][:3] == ["/usr/bin/sudo", "-n", PLUGIN]
    assert result["exit_status"] == 0, result["output"]
    assert result["output"].startswith("QCOW2 OK - 2 images"), result["output"]
    control = results["direct"]
    assert control["command"][0] == PLUGIN
    assert control["exit_status"] == 3 and "Permission denied" in control["output"], control


def _snippet_commands(text: str) -> list[list[str]]:
    (plugin,) = [table for tables in tomllib.loads(text)["inputs"].values() for table in tables]
    if "command" in plugin:
        return [plugin["command"]]
    return [shlex.split(c) if isinstance(c, str) else c for c in plugin["commands"]]


def test_telegraf_snippets_run_as_telegraf(installed: IsolatedRoot) -> None:
    for snippet in ("qcow2-exec.conf", "qcow2-exec-legacy.conf", "qcow2-execd.conf"):
        for argv in _snippet_commands(installed.read(f"{EXAMPLES}/telegraf/{snippet}")):
            assert argv[:3] == ["/usr/bin/sudo", "-n", TELEGRAF], argv
            # execd: one newline, one batch; stdin then closes, as when Telegraf stops.
            proc = installed.run(argv, user="telegraf", input="\n", check=False)
            assert proc.returncode == 0, (snippet, proc.stderr)
            for image, size in SIZES.items():
                line = next(line for line in proc.stdout.splitlines()
                            if line.startswith(f"qcow2,path={IMAGES}/{image} "))
                assert f"virtual_size_bytes={size}i" in line and "scrape_error=0i" in line
            control = installed.run(argv[2:], user="telegraf", input="\n", check=False)
            assert "scrape_error=1i" in control.stdout and "Permission denied" in control.stderr


def _exec_start(unit: str) -> list[str]:
    joined = unit.replace("\\\n", " ")
    (line,) = [line for line in joined.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_textfile_service_feeds_node_exporter(installed: IsolatedRoot, agent_dir: Path) -> None:
    service, timer = installed.read(SERVICE), installed.read(TIMER)
    # The conditions that keep the enabled timer harmless hold on this KVM host.
    conditions = re.findall(r"^ConditionPathIsDirectory=(.*)$", service + timer, re.M)
    assert sorted(conditions) == [IMAGES, TEXTFILE_DIR]
    for directory in conditions:
        installed.run(["test", "-d", directory])
    argv = _exec_start(service)
    assert argv[0] == "/usr/bin/qcow2-textfile" and f"{TEXTFILE_DIR}/qcow2.prom" in argv
    installed.run(argv)  # as systemd would: as root (no systemd here to start the unit)
    with node_exporter(Path(TEXTFILE_DIR), agent_dir,
                       enter=installed.enter("prometheus")) as exporter:
        scraped = exporter.scrape()
    samples = {(sample.name, sample.labels.get("path")): sample.value
               for family in text_string_to_metric_families(scraped)
               for sample in family.samples}
    assert samples[("node_textfile_scrape_error", None)] == 0
    for image, size in SIZES.items():
        assert samples[("qcow2_virtual_size_bytes", f"{IMAGES}/{image}")] == size
        assert samples[("qcow2_health", f"{IMAGES}/{image}")] == 0
        assert samples[("qcow2_scrape_error", f"{IMAGES}/{image}")] == 0


def repack(deb: Path, version: str, dest: Path) -> Path:
    """The same package as a later version (the upgrade path: preinst/postinst with the old
    version, conffile handling), rebuilt with dpkg-deb."""
    tree = dest / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    control = tree / "DEBIAN" / "control"
    text = re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
    control.write_text(text)
    newer = dest / f"{PACKAGE}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(newer)],
                   check=True, timeout=120, capture_output=True)
    return newer


# What may stay after a purge (Debian policy: dpkg's and apt's own records and logs, and the
# caches apt and man-db's trigger regenerate), as path patterns.
RECORDS = re.compile(r"/var/(lib/dpkg|lib/apt|cache/apt|cache/debconf|cache/man|log)(/|$)"
                     r"|/var/lib/systemd/deb-systemd-helper-(enabled|masked)(/|$)")


def test_upgrade_keeps_the_admins_edit_and_purge_leaves_nothing(built: Path,
                                                                 tmp_path: Path) -> None:
    deb = deb_of(built)
    newer = repack(deb, "0.1.0+upgrade1", tmp_path)
    conffile = "/etc/nagios-plugins/config/qcow2.cfg"
    with isolated_root() as root:
        prepare(root)
        before = root.changes()
        apt_install(root, deb)
        root.run(["sh", "-c", f"echo '# local edit' >> {conffile}"])
        apt_install(root, newer)
        assert root.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}",
                         PACKAGE]).stdout.strip() == "0.1.0+upgrade1 ii"
        assert root.read(conffile).endswith("# local edit\n")
        leftovers = root.run(["find", "/etc", "-name", "*.dpkg-*"]).stdout
        assert leftovers == "", leftovers
        # A textfile written by the service: the package's to remove on purge.
        root.run(_exec_start(root.read(SERVICE)))
        root.run(["test", "-s", f"{TEXTFILE_DIR}/qcow2.prom"])
        root.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "purge", "-y", "-q", PACKAGE],
                 env={**BUILD_ENV, "DEBIAN_FRONTEND": "noninteractive"})
        after = root.changes()
        on_host = {path for path, stamp in after.items()
                   if stamp.startswith("d ") and Path(path).is_dir()}
    # A host path hidden before (a whiteout, type c) and hidden again after is unchanged.
    changed = {path for path, stamp in after.items() if before.get(path) != stamp
               and not (stamp.startswith("c ") and before.get(path, "").startswith("c "))}
    # Directories of the host itself are listed when something below them changed.
    left = sorted(path for path in changed - on_host if not RECORDS.match(path))
    assert left == [], left
    status = [path for path in changed if "qcow2" in path and not path.startswith("/var/log/")]
    assert status == [], status


def test_package_version_is_the_projects() -> None:
    """A native package: debian/changelog's version is pyproject.toml's (what --version
    prints), bumped together."""
    debian = subprocess.run(["dpkg-parsechangelog", "-l", str(REPO / "debian" / "changelog"),
                             "-S", "Version"], capture_output=True, text=True, check=True,
                            timeout=60).stdout.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert debian == project
