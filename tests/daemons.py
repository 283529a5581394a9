"""Real consumers on loopback for end-to-end tests: influxd 1.6, prometheus-node-exporter and
the Prometheus server.

Each daemon runs in a temporary directory on 127.0.0.1 with a free port, is waited for with a
bounded deadline, and is always stopped (SIGTERM, then SIGKILL). A missing binary is a test
failure with the package to install, never a skip: CI installs them.
Also the small image helpers the adapter tests share (qemu-img / qemu-io).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from corpus import qemu_io

START_TIMEOUT = 30.0  # seconds; influxd typically needs < 2 s, node_exporter < 0.5 s
HTTP_TIMEOUT = 10.0

PACKAGES = {
    "influxd": "influxdb",
    "prometheus-node-exporter": "prometheus-node-exporter",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "losetup": "mount",
}


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} not found on PATH: install it (apt-get install -y {PACKAGES.get(name, name)})"
        )
    return path


def run(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool and fail with its output when it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- images -----------------------------------------------------------------------------------


def make_image(
    path: Path,
    size: str = "64M",
    *,
    backing: Optional[Path] = None,
    options: Sequence[str] = (),
    write: Sequence[str] = (),
) -> Path:
    """Create a qcow2 image with qemu-img and optionally write data into it with one qemu-io
    (commands in one process, as qemu packs consecutive compressed writes into one host
    cluster)."""
    args = [require_binary("qemu-img"), "create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", str(backing), "-F", "qcow2"]
    for option in options:
        args += ["-o", option]
    args += [str(path)]
    if backing is None:
        args.append(size)
    run(args)
    if write:
        qemu_io(path, *write)
    return path


# --- ports and HTTP -----------------------------------------------------------------------------


@contextmanager
def own_filesystem(directory: Path, size: str = "256m") -> Iterator[Path]:
    """A fresh tmpfs mounted on `directory` (created) for the block's duration.

    An image file's container is its filesystem: tests whose expected state depends on how full
    that is must not depend on the build machine's disk.
    """
    if os.geteuid() != 0:
        raise AssertionError("mounting a tmpfs needs root; run the test suite as root")
    directory.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)])
    try:
        yield directory
    finally:
        # Lazy: a plugin a daemon started just before it stopped may still be exiting.
        run(["umount", "--lazy", str(directory)])


def free_port() -> int:
    """A port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str, url: str, data: Optional[bytes] = None, timeout: float = HTTP_TIMEOUT
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def _wait_http(proc: subprocess.Popen[bytes], url: str, expect: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {proc.returncode} before answering {url}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        try:
            status, _ = http("GET", url, timeout=1.0)
            if status == expect:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not answering {expect} within {START_TIMEOUT}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- influxd ----------------------------------------------------------------------------------


@dataclass
class Influx:
    url: str
    database: str

    def write(self, body: bytes, precision: str = "s") -> tuple[int, bytes]:
        query = urllib.parse.urlencode({"db": self.database, "precision": precision})
        return http("POST", f"{self.url}/write?{query}", body)

    def query(self, q: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"db": self.database, "q": q})
        status, body = http("GET", f"{self.url}/query?{query}")
        if status != 200:
            raise AssertionError(f"query {q!r} failed with {status}: {body!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def rows(self, q: str) -> list[dict[str, Any]]:
        """The rows of a single-statement query as dicts, tags merged in."""
        out: list[dict[str, Any]] = []
        for statement in self.query(q)["results"]:
            if "error" in statement:
                raise AssertionError(f"query {q!r}: {statement['error']}")
            for series in statement.get("series", []):
                tags = series.get("tags", {})
                for values in series["values"]:
                    row = dict(zip(series["columns"], values))
                    row.update(tags)
                    out.append(row)
        return out


_INFLUXD_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = false
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


@contextmanager
def influxd(tmp: Path, database: str = "t") -> Iterator[Influx]:
    """influxd 1.6 on loopback with a throwaway config and data directory."""
    binary = require_binary("influxd")
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = free_port(), free_port()
    conf = tmp / "influxd.conf"
    conf.write_text(_INFLUXD_CONF.format(dir=tmp, rpc_port=rpc_port, http_port=http_port))
    log = tmp / "influxd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, "run", "-config", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{http_port}"
        _wait_http(proc, f"{url}/ping", 204, log)
        status, body = http(
            "POST", f"{url}/query", urllib.parse.urlencode({"q": f"CREATE DATABASE {database}"})
            .encode()
        )
        assert status == 200, body
        yield Influx(url, database)
    finally:
        _stop(proc)


# --- node_exporter ----------------------------------------------------------------------------


@dataclass
class NodeExporter:
    url: str
    directory: Path

    def scrape(self) -> str:
        status, body = http("GET", f"{self.url}/metrics")
        assert status == 200, body[:500]
        return body.decode("utf-8")


def as_user(user: str) -> list[str]:
    """The command prefix that runs a program as `user`, with that user's groups and nothing
    else changed; setpriv execs it (no process in between, so signals reach it)."""
    import pwd

    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--"]


@contextmanager
def node_exporter(textfile_dir: Path, tmp: Path,
                  enter: Sequence[str] = ()) -> Iterator[NodeExporter]:
    """prometheus-node-exporter with only the textfile collector, reading `textfile_dir`;
    `enter` prefixes its command line (tests/debian_root.py: inside the isolated root, as the
    exporter's user)."""
    binary = require_binary("prometheus-node-exporter")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "node_exporter.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                *enter,
                binary,
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={textfile_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GOMAXPROCS": "1"},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(proc, f"{url}/metrics", 200, log)
        yield NodeExporter(url, textfile_dir)
    finally:
        _stop(proc)


# --- Prometheus server --------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str

    def api(self, endpoint: str, **params: Any) -> Any:
        """The `data` of one HTTP API call (GET /api/v1/ENDPOINT?params)."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http("GET", f"{self.url}/api/v1/{endpoint}?{query}")
        answer = json.loads(body) if body.startswith(b"{") else {}
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"{endpoint} {params}: HTTP {status}: {body[:300]!r}")
        return answer["data"]

    def query(self, promql: str, at: Optional[float] = None) -> list[dict[str, Any]]:
        """The result of an instant query (a vector: [{"metric": labels, "value": [t, v]}])."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending or firing alert: labels, annotations, state, activeAt, value."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        """Every label set matching `match` that had a sample between start and end."""
        found: list[dict[str, str]] = self.api("series", **{"match[]": match, "start": start,
                                                            "end": end})
        return found


_PROMETHEUS_YML = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
rule_files: [{rules}]
scrape_configs:
  - job_name: node
    static_configs:
      - targets: [{targets}]
"""


@contextmanager
def prometheus(
    tmp: Path, targets: Sequence[str], rules: Path, interval: str = "1s"
) -> Iterator[Prometheus]:
    """Debian's Prometheus server on loopback: scraping `targets` (host:port, job "node") and
    evaluating `rules` every `interval`, its storage in `tmp`."""
    binary = require_binary("prometheus")
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(_PROMETHEUS_YML.format(
        interval=interval, rules=json.dumps(str(rules)),
        targets=", ".join(json.dumps(target) for target in targets)))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "GOMAXPROCS": "1"},
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(proc, f"{url}/-/ready", 200, log)
        yield Prometheus(url)
    finally:
        _stop(proc)


@contextmanager
def holding_open(
    image: Path, log: Optional[Path] = None, timeout: float = 10.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A qemu-io process holding `image` (and its backing files) open until the block exits.

    Its stdout and stderr go to `log` when given: a regular file that is not an image.
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [require_binary("qemu-io"), "-f", "qcow2", "-c", "sleep 20000", str(image)],
            stdout=out,
            stderr=out,
        )
    try:
        # Wait until the image is really open: qemu-io opens it before running the command.
        deadline = time.monotonic() + timeout
        target = os.path.realpath(image)
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"qemu-io exited with {proc.returncode} for {image}")
            try:
                fd_dir = f"/proc/{proc.pid}/fd"
                links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
            except OSError:
                links = []
            if target in links:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu-io did not open {image} within {timeout}s")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
