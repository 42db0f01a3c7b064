"""A real headless Chromium (Debian's ``chromium``), driven over the DevTools protocol with the standard library.

``--remote-debugging-pipe``: Chromium reads protocol commands from its fd 3 and writes answers and events to its
fd 4, each message JSON ended by a NUL byte (https://chromedevtools.github.io/devtools-protocol/, "pipe"
transport in Chromium's ``content/browser/devtools/devtools_pipe_handler.cc``). No websocket client, no port.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium's own connections are refused on a closed machine.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
TIMEOUT = 30.0  # seconds for one answer: a deadline on a blocking read, never a sleep


class ChromiumMissing(RuntimeError):
    pass


@dataclass
class Page:
    """What a loaded page showed: a value read by script in the page's own world, and what it logged."""

    value: Any
    console: list[str] = field(default_factory=list)
    screenshot: bytes | None = None


class Chromium:
    def __init__(self, process: subprocess.Popen[bytes], commands: int, answers: int, log: Path) -> None:
        self._process, self._commands, self._answers, self._log = process, commands, answers, log
        self._buffer = b""
        self._next_id = 0

    def read(self, url: str, expression: str, *, screenshot: bool = False) -> Page:
        """Open ``url`` in a new tab, wait for its load event, evaluate ``expression`` (its value as JSON)."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        console: list[str] = []
        try:
            for domain in ("Page", "Runtime", "Log"):
                self._call(f"{domain}.enable", session=session)
            self._call("Page.navigate", {"url": url}, session=session)
            self._until("Page.loadEventFired", session, console)
            answer = self._call(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session, seen=console
            )
            if "exceptionDetails" in answer:
                raise AssertionError(f"the expression failed in the page: {answer['exceptionDetails']}")
            image = None
            if screenshot:  # as a desktop mail client's window shows it
                self._call(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                    session=session,
                )
                size = self._call("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
                shot = self._call(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True, "clip": clip},
                    session=session,
                )
                image = base64.b64decode(shot["data"])
            return Page(answer["result"].get("value"), console, image)
        finally:
            self._call("Target.closeTarget", {"targetId": target})

    def _call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        seen: list[str] | None = None,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError(f"Chromium is gone: {self._exit()}") from None
        while True:
            data = self._message()
            if data.get("id") == self._next_id:
                if "error" in data:
                    raise AssertionError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result
            _collect(data, seen)

    def _until(self, event: str, session: str, seen: list[str]) -> None:
        while True:
            data = self._message()
            _collect(data, seen)
            if data.get("method") == event and data.get("sessionId") == session:
                return

    def _exit(self) -> str:
        said = self._log.read_text(encoding="utf-8", errors="replace")[-2000:] if self._log.exists() else ""
        return f"exit code {self._process.poll()}; it said: {said}"

    def _message(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._answers], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"Chromium did not answer within {TIMEOUT:.0f} s")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise AssertionError(f"Chromium closed the DevTools pipe: {self._exit()}")
            self._buffer += chunk
        text, self._buffer = self._buffer.split(b"\0", 1)
        data: dict[str, Any] = json.loads(text)
        return data


def _collect(data: dict[str, Any], seen: list[str] | None) -> None:
    """Console calls and log entries (a CSP violation is one) as text."""
    if seen is None:
        return
    params = data.get("params") or {}
    if data.get("method") == "Runtime.consoleAPICalled":
        seen.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
    elif data.get("method") == "Log.entryAdded":
        seen.append(str(params.get("entry", {}).get("text", "")))


def _above_4(fd: int) -> int:
    """``fd`` moved to a number above 4, so that placing the pipes at 3 and 4 overwrites neither of them."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@contextmanager
def chromium() -> Iterator[Chromium]:
    """One headless Chromium with a fresh profile, stopped on exit."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (apt-get install -y chromium); "
            "set SKIP_BROWSER_TESTS=1 to leave the browser tests out on purpose"
        )
    home = Path(tempfile.mkdtemp(prefix="rsr-chromium-"))
    profile, log = home / "profile", home / "chromium.log"
    commands_read, commands_write = (_above_4(fd) for fd in os.pipe())
    answers_read, answers_write = (_above_4(fd) for fd in os.pipe())

    def pipes_at_3_and_4() -> None:  # in the child, before Chromium starts: where it expects them
        os.dup2(commands_read, 3)
        os.dup2(answers_write, 4)

    with log.open("wb") as said:
        process = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=said,
            # Every other descriptor of this process is close-on-exec (PEP 446); dup2 makes 3 and 4 inheritable.
            close_fds=False,
            preexec_fn=pipes_at_3_and_4,
        )
    os.close(commands_read)
    os.close(answers_write)
    try:
        yield Chromium(process, commands_write, answers_read, log)
    finally:
        os.close(commands_write)
        os.close(answers_read)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)
