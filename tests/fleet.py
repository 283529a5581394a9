"""Hypervisors for tests/test_fleet.py: each a node_exporter on its own port (so its own
`instance` label in Prometheus) and a qcow2-textfile writer that rewrites the host's textfile
in a loop, as the shipped timer does every minute. The test changes images only between two
runs of a host's writer (`between_runs`), never during one.

Also the test's view of a Prometheus server's alerts, and waiting for a state with a
deadline."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence, TypeVar

from daemons import NodeExporter, Prometheus, as_user

# Seconds any awaited state may take; each takes under 15 s here (the longest: a stale textfile,
# stale_after plus `for:`), so >= 5x what it needs on a busy 2-core machine.
DEADLINE = 90.0
POLL = 0.25
PAUSE = 0.2  # between two runs of a writer


class Writer:
    """`argv` run again and again, a short pause between runs, until closed; `enabled` cleared
    stops it as a broken timer would. Exits other than 0 are failures of the test."""

    def __init__(self, name: str, argv: Sequence[str], user: Optional[str] = None,
                 env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> None:
        self.name = name
        self.argv = [*(as_user(user) if user else ()), *argv]
        self.popen: dict[str, Any] = {"env": env, "cwd": cwd}
        self.lock = threading.Lock()  # held by a run, and by the test while it changes images
        self.enabled = threading.Event()
        self.enabled.set()
        self.runs = 0
        self.failures: list[str] = []
        self._done = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"writer-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.enabled.is_set():
                with self.lock:
                    self._run_once()
            self._stop.wait(PAUSE)

    def _run_once(self) -> None:
        try:
            proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=120,
                                  **self.popen)
            failure = (f"{self.name}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
                       if proc.returncode != 0 else None)
        except (OSError, subprocess.SubprocessError) as exc:
            failure = f"{self.name}: {exc}"
        with self._done:
            self.runs += 1
            if failure:
                self.failures.append(failure)
            self._done.notify_all()

    def wait_runs(self, count: int = 1) -> None:
        """Until `count` more runs have completed (the writer must be enabled)."""
        with self._done:
            target = self.runs + count
            if not self._done.wait_for(lambda: self.runs >= target, timeout=DEADLINE):
                raise AssertionError(f"{self.name}: {count} run(s) not done within {DEADLINE} s")
        self.check()

    @contextmanager
    def between_runs(self) -> Iterator[None]:
        """The block runs while no run is in progress."""
        with self.lock:
            yield

    def check(self) -> None:
        assert not self.failures, self.failures[:3]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


@dataclass
class Host:
    name: str
    exporter: NodeExporter
    writer: Writer
    textfile: Path

    @property
    def instance(self) -> str:
        """The label Prometheus gives its scrapes: the target's host:port."""
        return self.exporter.url.removeprefix("http://")


class Alert(NamedTuple):
    """What tells two alerts apart: the rule, the host and what it is about (a disk's path, a
    filesystem's mount point, or nothing for a host's textfile), the health rule if any."""

    name: str
    host: str
    subject: str = ""
    rule: str = ""


def alert_of(labels: dict[str, str], hosts: dict[str, str]) -> Alert:
    return Alert(labels["alertname"], hosts.get(labels.get("instance", ""), "?"),
                 labels.get("path", labels.get("mountpoint", "")), labels.get("rule", ""))


def active_alerts(prom: Prometheus, hosts: dict[str, str]) -> dict[Alert, str]:
    """Every pending or firing alert of the server, with its state."""
    return {alert_of(a["labels"], hosts): a["state"] for a in prom.alerts()}


T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], done: Callable[[T], bool],
             deadline: float = DEADLINE) -> T:
    """Poll `probe` until `done` holds for its value; fail with the last value seen."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:.0f} s; last seen: "
                                 f"{str(value)[:600]}")
        time.sleep(POLL)


def wait_alerts(prom: Prometheus, hosts: dict[str, str], firing: set[Alert],
                what: str) -> None:
    """Until exactly `firing` fire, and nothing else is pending or firing."""
    expected = dict.fromkeys(firing, "firing")
    try:
        wait_for(what, lambda: active_alerts(prom, hosts), lambda got: got == expected)
    except AssertionError:
        got = active_alerts(prom, hosts)
        missing = sorted(alert for alert in firing if got.get(alert) != "firing")
        unexpected = sorted((alert, state) for alert, state in got.items()
                            if alert not in firing)
        raise AssertionError(f"{what}: not within the deadline; not firing: {missing}; "
                             f"unexpected: {unexpected}") from None


__all__ = ["DEADLINE", "Alert", "Host", "Writer", "active_alerts", "alert_of", "wait_alerts",
           "wait_for"]
