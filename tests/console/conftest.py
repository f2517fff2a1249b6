"""One real fieldsync-server for the console's tests, seeded through its command line and by
devices syncing clinic data, and one headless Chromium to look at it. The therapists' tablets
are written by `fieldsync-device seed` with the project's clinic data generator
(tests/src/clinic_data.rs); every device syncs through the Python bindings.

The server samples its counters every second (`--metrics-sample-secs 1`) so that the sync
health charts have data within the run. Everything started here is stopped, and its files
removed, when the session ends."""

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings/python"))

import fieldsync  # noqa: E402  (built into bindings/python by bindings/python/build.sh)

CLINIC_SCHEMA = ROOT / "core/tests/fixtures/clinic.schema.json"
SCREENSHOTS = ROOT / "target/console-screenshots"
DEVICE = pathlib.Path(os.environ.get("FIELDSYNC_DEVICE", ROOT / "target/debug/fieldsync-device"))
# The clinic the generator makes from SEED with THERAPISTS therapists (12 clients each).
SEED = 42
THERAPISTS = 2
# A user whose name is markup: the console must show it as text.
HOSTILE_NAME = '<img src=x onerror="document.title=1">'


@dataclass
class Tablet:
    """A therapist's tablet store as `fieldsync-device seed` wrote it: the therapist's name,
    the scopes their records are in, and those records' ids."""

    db: pathlib.Path
    name: str
    caseload: str
    team: str
    records: list[str]


def seed_tablet(directory: pathlib.Path, therapist: int) -> Tablet:
    """Writes the tablet store of therapist `therapist` with what the clinic data generator
    gives them (`fieldsync-device seed`, whose output is described in its source)."""
    db = directory / f"tablet-{therapist}.db"
    out = subprocess.run(
        [str(DEVICE), "seed", str(db), str(therapist), str(THERAPISTS), str(SEED)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    # therapist <id> <caseload> <team> <name>, record <collection> <id>..., seeded <records>
    _, _, caseload, team, name = out[0].split(" ", 4)
    records = [line.split(" ")[2] for line in out[1:-1]]
    assert out[-1] == f"seeded {len(records)}", out[-1]
    return Tablet(db=db, name=name, caseload=caseload, team=team, records=records)


@dataclass
class Device:
    """An enrolled device: its id, name, token, and once it synced its store and client."""

    id: int
    name: str
    token: str
    user: str
    db: pathlib.Path = None
    store: object = None
    client: object = None

    def sync(self):
        return asyncio.run(self.client.sync_now(self.store, None))

    def pull_status(self, url: str) -> int:
        """The status of a plain `GET /v1/pull` with this device's token."""
        request = urllib.request.Request(
            f"{url}/v1/pull",
            headers={"Authorization": f"Bearer {self.token}", "fieldsync-protocol": "1"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


@dataclass
class Clinic:
    """The seeded server: its URL, the administrator's token and everyone's devices."""

    url: str
    admin_token: str
    therapists: list[str]
    devices: dict[str, Device] = field(default_factory=dict)
    records: dict[str, list[str]] = field(default_factory=dict)
    spare_token: str = ""


class Server:
    def __init__(self, binary: pathlib.Path, directory: pathlib.Path):
        self.binary = binary
        self.directory = directory
        self.db = directory / "server.db"
        self.process = None

    def admin(self, *args: str) -> str:
        return subprocess.run(
            [str(self.binary), "--db", str(self.db), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def enroll(self, user: str, name: str) -> Device:
        out = self.admin("enroll-device", "--user", user, "--name", name)
        lines = dict(line.split(" ", 1) for line in out.splitlines())
        device_id = int(lines["device"].split()[0])
        return Device(id=device_id, name=name, token=lines["token:"], user=user)

    def start(self) -> str:
        env = dict(os.environ, FIELDSYNC_LOG="warn")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--db",
                str(self.db),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-sample-secs",
                "1",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for line in self.process.stdout:
            if line.startswith("listening on "):
                return line.removeprefix("listening on ").strip()
        raise RuntimeError("the server exited before it listened")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seed(server: Server, directory: pathlib.Path) -> Clinic:
    """Two therapists with a tablet each syncing their caseload's clinic data, a second device
    and a second token to revoke, a supervisors' group mapping, and two schema versions."""
    server.admin("schema", "set", str(CLINIC_SCHEMA))
    newer = json.loads(CLINIC_SCHEMA.read_text())
    newer["collections"]["clients"]["fields"]["pronouns"] = {"type": "string"}
    (directory / "clinic-v2.schema.json").write_text(json.dumps(newer))
    server.admin("schema", "set", str(directory / "clinic-v2.schema.json"))
    (directory / "groups").write_text('group "supervisors" -> read caseload-*\n')
    server.admin("group-grants", "set", str(directory / "groups"))

    server.admin("create-user", "clinic-admin", "--admin")
    admin = server.enroll("clinic-admin", "Front desk laptop")
    server.admin("create-user", HOSTILE_NAME)
    server.enroll(HOSTILE_NAME, "<b>bold</b> tablet")

    tablets = [seed_tablet(directory, t) for t in range(THERAPISTS)]
    therapists = []
    first_names = []
    devices = {}
    records = {}
    for tablet in tablets:
        first, last = tablet.name.split()
        user = f"{first}.{last}".lower()
        therapists.append(user)
        first_names.append(first)
        server.admin("create-user", user)
        server.admin("grant", "--user", user, "--scope", tablet.caseload)
        server.admin("grant", "--user", user, "--scope", tablet.team)
        devices[user] = server.enroll(user, f"{first}'s tablet")
        devices[user].db = tablet.db
        records[user] = tablet.records
    # The device the revoke test revokes, and a second token of the first tablet.
    devices["phone"] = server.enroll(therapists[1], f"{first_names[1]}'s phone")
    devices["phone"].db = directory / "phone.db"
    first_tablet = devices[therapists[0]]
    spare = server.admin("issue-token", "--device", str(first_tablet.id)).split("token: ")[1]

    url = server.start()
    schema = CLINIC_SCHEMA.read_text()
    for device in devices.values():
        device.store = fieldsync.Store(str(device.db), schema)
        device.client = fieldsync.SyncClient(
            fieldsync.SyncConfig(endpoint=url, token=device.token)
        )
    # A client written into a caseload its therapist may not write: refused by the server.
    devices[therapists[1]].store.insert(
        "clients", fieldsync.fields(caseload_id=tablets[0].caseload, name="Not mine")
    )
    for device in devices.values():
        device.sync()
    return Clinic(
        url=url,
        admin_token=admin.token,
        therapists=therapists,
        devices=devices,
        records=records,
        spare_token=spare.strip(),
    )


@pytest.fixture(scope="session")
def clinic_server():
    binary = pathlib.Path(
        os.environ.get("FIELDSYNC_SERVER", ROOT / "target/debug/fieldsync-server")
    )
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it with `cargo build -p fieldsync-server`")
    if not DEVICE.exists():
        pytest.fail(
            f"{DEVICE} is missing: build it with "
            "`cargo build -p fieldsync-tests --bin fieldsync-device`"
        )
    with tempfile.TemporaryDirectory(prefix="fieldsync-console-") as directory:
        server = Server(binary, pathlib.Path(directory))
        try:
            yield seed(server, pathlib.Path(directory))
        finally:
            server.stop()


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for argument in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--lang=en",
    ]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
