"""The daemon fixture: runs the real binary (``$HYBRIDSTORE_BIN``, default
``<repo>/target/debug/hybridstore``) as ``hybridstore --data-dir TMP serve --listen
127.0.0.1:0 --listen unix:TMP/sock``, waits for its ``listening on …`` lines, stops it at the end.
A missing binary fails the test (it is never skipped)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures" / "legacy"
START_TIMEOUT_S = 60.0


def binary() -> str:
    path = os.environ.get("HYBRIDSTORE_BIN") or str(REPO / "target" / "debug" / "hybridstore")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"hybridstore binary not found at {path}: build it (cargo build --bin hybridstore) or set HYBRIDSTORE_BIN",
            pytrace=False,
        )
    return path


def daemon_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment without the suite's Postgres/Redis and hybridstore settings: each test's
    daemon is log-only and configured by its flags alone."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("HYBRIDSTORE_") or k in ("DATABASE_URL", "REDIS_URL"))
    }
    env.setdefault("RUST_LOG", "warn")
    env.update(extra or {})
    return env


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the binary (import-legacy, export-legacy, …) and returns what it did."""
    proc = subprocess.run([binary(), *args], env=daemon_env(), capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Daemon:
    """One ``hybridstore serve`` on a data directory; restartable on the same port and socket."""

    def __init__(self, data_dir: Path, env: Optional[dict[str, str]] = None) -> None:
        self.data_dir = data_dir
        self.sock_dir = Path(tempfile.mkdtemp(prefix="hs-"))  # short: Unix socket paths are
        self.sock = self.sock_dir / "sock"  # limited to ~100 bytes
        self.env = daemon_env(env)
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.stdout: list[str] = []
        self.stderr_path = data_dir.parent / f"{data_dir.name}.daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix:{self.sock}"

    def start(self) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        listen = f"127.0.0.1:{self.port or 0}"
        cmd = [binary(), "--data-dir", str(self.data_dir), "serve", "--listen", listen, "--listen", f"unix:{self.sock}"]
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=self.env, text=True, bufsize=1)
        stderr.close()
        found: dict[str, str] = {}
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.stdout.append(line)
                line = line.strip()
                if line.startswith("listening on http://"):
                    found["http"] = line[len("listening on http://") :]
                elif line.startswith("listening on unix:"):
                    found["unix"] = line[len("listening on unix:") :]
                if "http" in found and "unix" in found:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"daemon did not say where it listens within {START_TIMEOUT_S}s: {self.log()}")
        if "http" not in found:
            code = self.proc.wait(5)
            raise AssertionError(f"daemon exited ({code}) before listening: {''.join(self.stdout)}{self.log()}")
        self.port = int(found["http"].rsplit(":", 1)[1])
        return self

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.sock_dir, ignore_errors=True)


@pytest.fixture
def make_daemon(tmp_path):
    made: list[Daemon] = []

    def make(data_dir: Optional[Path] = None, env: Optional[dict[str, str]] = None, start: bool = True) -> Daemon:
        d = Daemon(data_dir or tmp_path / f"data{len(made)}", env)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()
