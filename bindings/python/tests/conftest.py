"""A real fieldsync-server process per test, on a random loopback port and a temp database."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CLINIC_SCHEMA = (ROOT / "core/tests/fixtures/clinic.schema.json").read_text()


class Server:
    """A running server and its admin command line."""

    def __init__(self, binary: pathlib.Path, directory: pathlib.Path):
        self.binary = binary
        self.db = directory / "server.db"
        self.process = None
        self.url = None

    def admin(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.binary), "--db", str(self.db), *args],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def start(self) -> None:
        # The server validates pushed records against the app's schema.
        self.admin("schema", "set", str(ROOT / "core/tests/fixtures/clinic.schema.json"))
        env = dict(os.environ, FIELDSYNC_LOG="warn")
        self.process = subprocess.Popen(
            [str(self.binary), "--db", str(self.db), "serve", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        # The server prints its address once it listens; reading that line is the wait.
        for line in self.process.stdout:
            if line.startswith("listening on "):
                self.url = line.removeprefix("listening on ").strip()
                return
        raise RuntimeError("the server exited before it listened")

    def user_with_device(self, user: str, scope: str) -> str:
        """Creates `user` with write access to `scope` and one device; returns its token."""
        self.admin("create-user", user)
        self.admin("grant", "--user", user, "--scope", scope)
        return self.enroll(user)

    def enroll(self, user: str) -> str:
        out = self.admin("enroll-device", "--user", user, "--name", f"{user}'s device")
        return next(
            line.removeprefix("token: ") for line in out.splitlines() if line.startswith("token: ")
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def server(tmp_path):
    binary = pathlib.Path(
        os.environ.get("FIELDSYNC_SERVER", ROOT / "target/debug/fieldsync-server")
    )
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it with `cargo build -p fieldsync-server`")
    running = Server(binary, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def schema() -> str:
    return CLINIC_SCHEMA
