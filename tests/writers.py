"""qemu-io as the running qemu of the in-use tests: a process that holds an image open for
writing (qemu's write lock), with its write-back cache, fed commands on stdin. Its L2 tables and
refcount blocks stay in qemu's caches between flushes, as under a guest.

`QemuIo.run()` runs commands and waits until qemu-io has done them. `RandomWriter` keeps it
busy from a thread: bursts of random writes (and discards, compressed writes, L1 growth by
`truncate`) inside a guest range, each burst ending with a flush, until stopped.
"""

from __future__ import annotations

import random
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from daemons import require_binary

PROMPT = b"qemu-io> "
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class QemuIo:
    """`qemu-io -t writeback` on one image, fed one command at a time.

    qemu-io reads stdin with stdio but takes one line per wakeup of its main loop, so lines
    written together wait for more input: each command is written only after the prompt that
    follows the previous one (its completion) has been printed."""

    def __init__(self, path: Path, cache: str = "writeback") -> None:
        self.proc = subprocess.Popen(
            [require_binary("qemu-io"), "-t", cache, "-f", "qcow2", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.prompts = threading.Semaphore(0)  # one per prompt printed: ready for a command
        self.errors: list[str] = []  # qemu-io lines that report a failed command
        self.commands = 0
        self._lock = threading.Lock()  # one feeder at a time
        threading.Thread(target=self._drain, daemon=True).start()
        self._ready(60)  # the first prompt: the image is open (and locked)
        self.prompts.release()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        while chunk := self.proc.stdout.read1(65536):
            pending += chunk
            *lines, pending = pending.split(PROMPT)
            for text in lines:
                self._note(text)
                self.prompts.release()
        self._note(pending)

    def _note(self, text: bytes) -> None:
        for line in text.decode(errors="replace").splitlines():
            if "failed" in line or "error" in line.lower() or "not found" in line:
                self.errors.append(line.strip())

    def _ready(self, timeout: float) -> None:
        if not self.prompts.acquire(timeout=timeout):
            raise AssertionError(f"qemu-io did not answer within {timeout} s "
                                 f"(exit {self.proc.poll()}): {self.errors[-3:]}")

    def run(self, *commands: str, timeout: float = 120) -> None:
        """Run commands one after the other and wait until qemu-io has done the last."""
        assert self.proc.stdin is not None
        with self._lock:
            for command in commands:
                self._ready(timeout)
                self.proc.stdin.write(f"{command}\n".encode())
                self.proc.stdin.flush()
                self.commands += 1
            self._ready(timeout)
            self.prompts.release()
        assert not self.errors, self.errors[:3]

    def close(self) -> int:
        """Quit qemu-io (a clean close: caches flushed, lock released); its exit status."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with self._lock:
                self._ready(120)
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
        return self.proc.wait(timeout=120)

    def __enter__(self) -> QemuIo:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Load:
    """What a RandomWriter writes: random extents of 4 KiB to 1 MiB inside [start, end)."""

    start: int
    end: int
    seed: int = 1
    burst: int = 7  # commands between two flushes
    discards: float = 0.15  # share of commands that discard
    compressed: float = 0.0  # share of commands that write one compressed cluster
    cluster_size: int = 64 * KiB
    grow_every: int = 0  # every N bursts, `truncate` the image 1 GiB larger (0: never)
    size: int = 0  # the image's virtual size, when growing it
    pause: float = 0.0  # seconds between bursts (0: as fast as qemu-io goes)


class RandomWriter:
    """Keeps a QemuIo busy with a Load from a thread until stop()."""

    def __init__(self, io: QemuIo, load: Load) -> None:
        self.io = io
        self.load = load
        self.bursts = 0
        self.bytes = 0
        self.failure = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _command(self, rng: random.Random, serial: int) -> str:
        load = self.load
        if rng.random() < load.compressed:
            cs = load.cluster_size
            offset = rng.randrange(load.start // cs, load.end // cs) * cs
            self.bytes += cs
            # qemu compresses only into unallocated clusters (EIO otherwise): discard first.
            return f"discard {offset} {cs}\nwrite -c -P {serial % 251 + 1} {offset} {cs}"
        length = rng.randrange(1, 257) * 4 * KiB
        offset = rng.randrange(load.start // (4 * KiB), (load.end - length) // (4 * KiB)) * 4 * KiB
        if rng.random() < load.discards:
            return f"discard {offset} {length}"
        self.bytes += length
        return f"write -P {serial % 251 + 1} {offset} {length}"

    def _feed(self) -> None:
        rng = random.Random(self.load.seed)
        size = self.load.size
        try:
            while not self._stop.is_set():
                commands = [self._command(rng, self.bursts * 8 + k)
                            for k in range(self.load.burst)]
                if self.load.grow_every and self.bursts % self.load.grow_every == 0:
                    size += GiB
                    commands.append(f"truncate {size}")
                self.io.run(*[line for command in commands for line in command.split("\n")],
                            "flush")
                self.bursts += 1
                self._stop.wait(self.load.pause)
        except (AssertionError, BrokenPipeError, ValueError) as exc:
            self.failure = str(exc)  # the test that stops the writer reports it

    def stop(self) -> None:
        """Stop after the current burst (flushed): qemu-io is then idle."""
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the writer did not stop"
        assert not self.failure, self.failure
