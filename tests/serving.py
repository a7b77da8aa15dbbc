"""edge-serve in its own process on a free loopback port, for the tests that call it as clients do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`edge-serve DEPLOY ...` in its own process; stopped (and its log shown on failure) at the end."""

    def __init__(self, deploy: Path, *args, python: str = sys.executable, env: dict | None = None):
        self.deploy, self.port = Path(deploy), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(deploy).parent / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([python, "-m", "edge_runtime.serve.cli", str(deploy), "--port", str(self.port),
                                      *map(str, args)], stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge-serve exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"edge-serve did not become ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
