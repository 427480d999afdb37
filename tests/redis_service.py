"""A real redis-server on loopback for the tests, started and stopped with scripts/redis-server.sh.

The script installs Debian's redis-server when it is missing; a test is skipped (with
the reason shown) only when redis-server can be neither found nor installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "redis-server.sh"


@dataclass
class RedisServer:
    port: int
    directory: Path
    tls: bool

    @property
    def url(self) -> str:
        """The URL without password (and, for TLS, with the test CA), as a user writes it."""
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.directory / 'ca.crt'}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def password(self) -> str:
        return (self.directory / "password").read_text().strip()

    @property
    def ca(self) -> Path | None:
        return self.directory / "ca.crt" if self.tls else None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, password=self.password)

    def start(self) -> None:
        args = ["start", "--port", str(self.port), "--dir", str(self.directory)] + (["--tls"] if self.tls else [])
        done = _script(*args)
        if done.returncode != 0:
            if not shutil.which("redis-server"):
                pytest.skip(f"redis-server is not installed and could not be installed: {_last(done.stderr)}")
            pytest.fail(f"redis-server did not start: {done.stderr}")

    def stop(self) -> None:
        _script("stop", "--port", str(self.port), "--dir", str(self.directory))


def start_redis(directory: Path, *, tls: bool = False) -> RedisServer:
    """A fresh redis-server on a free loopback port, its files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(free_port(), directory, tls)
    server.start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
