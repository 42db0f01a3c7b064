"""Azurite's queue service for the benchmarks: in memory, on a free port, stopped on exit.

The same shape as the test session's fixture (tests/conftest.py), kept separate so the benchmarks never import
tests. No ``--location``: Azurite 3.37 exits at start ("The --inMemoryPersistence option is not supported when
the --location option is set"); it runs in a scratch directory instead, in case it writes anything.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_QUEUE = ROOT / "node_modules" / ".bin" / "azurite-queue"
# Azurite's well-known development account: public, documented, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class AzuriteQueue:
    port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{self.port}/{DEV_ACCOUNT};"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited early with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"Azurite did not listen on port {port} in time")


@contextmanager
def azurite_queue(timeout: float = 30.0) -> Iterator[AzuriteQueue]:
    if not AZURITE_QUEUE.exists():
        raise RuntimeError(f"{AZURITE_QUEUE} is missing: run `make setup` (npm ci)")
    workdir = tempfile.mkdtemp(prefix="azurite-bench-")
    port = _free_port()
    process = subprocess.Popen(
        [
            str(AZURITE_QUEUE),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, time.monotonic() + timeout)
        yield AzuriteQueue(port=port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
