"""A real PostgreSQL server for tests: Debian's `postgresql` package, started in a temporary folder on a loopback
port with `initdb` and `pg_ctl`, trust authentication, no fsync. As root (PostgreSQL refuses to run as root) the
server runs as the package's `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.serving import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} is not installed: `make tools` installs Debian's postgresql")
    return found


class Postgres:
    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="tabserve-postgres-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.url = f"postgresql://tabserve@127.0.0.1:{self.port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "tabserve", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def kill(self) -> None:
        """Stop at once, as a crash would (`immediate`: no checkpoint, every connection cut)."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        subprocess.run([*self.as_user, _binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)
