"""Local Azure Storage (Azurite's queue and table services) for the tests, the benchmarks and local runs.

In memory, on free loopback ports, stopped on exit. No ``--location``: Azurite 3.37 refuses it together with
``--inMemoryPersistence``; it runs in a scratch directory instead, in case it writes anything.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(__file__).resolve().parent.parent / "node_modules" / ".bin"
# Azurite's well-known development account: public, documented, not a secret.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class Azurite:
    ports: dict[str, int] = field(default_factory=dict)  # service ("queue", "table") -> port

    @property
    def queue_port(self) -> int:
        return self.ports["queue"]

    @property
    def table_port(self) -> int:
        return self.ports["table"]

    @property
    def connection_string(self) -> str:
        endpoints = "".join(
            f"{service.title()}Endpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};" for service, port in self.ports.items()
        )
        return f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};{endpoints}"


def free_port() -> int:
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


def missing(services: Sequence[str] = ("queue", "table")) -> list[str]:
    return [f"azurite-{s}" for s in services if not (BIN / f"azurite-{s}").exists()]


@contextmanager
def running(services: Sequence[str] = ("queue", "table"), timeout: float = 30.0) -> Iterator[Azurite]:
    absent = missing(services)
    if absent:
        raise RuntimeError(f"Azurite is not installed ({', '.join(absent)} missing): run `make setup` (npm ci)")
    workdir = tempfile.mkdtemp(prefix="azurite-")
    ports = {service: free_port() for service in services}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for service, port in ports.items():
            processes.append(
                subprocess.Popen(
                    [
                        str(BIN / f"azurite-{service}"),
                        f"--{service}Host",
                        "127.0.0.1",
                        f"--{service}Port",
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
            )
        deadline = time.monotonic() + timeout
        for process, port in zip(processes, ports.values(), strict=True):
            _wait_for_port(port, process, deadline)
        yield Azurite(ports=ports)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
