"""Realistic clinic data: tests/src/clinic_data.rs in Python, for the console's tests to write
through the Python bindings. The same generator (xorshift64*), word lists and order of draws, so
a seed makes the same therapists, clients and sessions as the Rust generator."""

from dataclasses import dataclass

MASK = (1 << 64) - 1

FIRST = ["Sam", "Ada", "Noor", "Leo", "Mia", "Ravi", "Zoe", "Omar", "Ivy", "Jon", "Lena", "Kai"]
LAST = ["Rivera", "Okafor", "Lindqvist", "Tanaka", "Moreau", "Nowak", "Haddad", "Quinn", "Ruiz"]
OBSERVATIONS = [
    "Worked on s-sounds in initial position.",
    "Good focus for the first twenty minutes.",
    "Tired after school; shortened the session.",
    "Used picture cards for sequencing.",
    "Practised stairs with the handrail.",
    "Parent joined for the last ten minutes.",
    "Tolerated the new splint well.",
    "Followed two-step instructions without prompts.",
]
GOALS = ["articulation", "fluency", "fine motor", "gross motor", "feeding", "social"]


@dataclass(frozen=True)
class ClinicSize:
    therapists: int
    clients: int
    sessions: int


class Rng:
    """xorshift64*, as `clinic_data::Rng`."""

    def __init__(self, seed: int):
        self.state = max(seed, 1)

    def next_u64(self) -> int:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & MASK
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & MASK

    def below(self, n: int) -> int:
        return self.next_u64() % max(n, 1)

    def pick(self, items: list[str]) -> str:
        return items[self.below(len(items))]


def caseload(t: int) -> str:
    return f"caseload-{t:03}"


def client_id(c: int) -> str:
    return f"client-{c:05}"


def therapists(size: ClinicSize, rng: Rng) -> list[tuple[str, str, dict]]:
    """(collection, id, fields) of each therapist."""
    return [
        (
            "therapists",
            f"therapist-{t:03}",
            {"team_id": f"team-{t % 5}", "name": f"{rng.pick(FIRST)} {rng.pick(LAST)}"},
        )
        for t in range(size.therapists)
    ]


def clients(size: ClinicSize, rng: Rng) -> list[tuple[str, str, dict]]:
    """Each client in its therapist's caseload, with goals and a note."""
    made = []
    for c in range(size.clients):
        therapist = c % max(size.therapists, 1)
        fields = {"caseload_id": caseload(therapist)}
        fields["name"] = f"{rng.pick(FIRST)} {rng.pick(LAST)}"
        fields["birth_year"] = 2008 + rng.below(14)
        fields["active"] = rng.below(10) != 0
        fields["risk_score"] = rng.below(100) / 10.0
        fields["next_visit"] = 1_790_000_000_000 + rng.below(90) * 86_400_000
        fields["notes"] = rng.pick(OBSERVATIONS)
        primary = rng.pick(GOALS)
        fields["goals"] = {"primary": primary, "secondary": [rng.pick(GOALS), rng.pick(GOALS)]}
        fields["therapist"] = f"therapist-{therapist:03}"
        made.append(("clients", client_id(c), fields))
    return made


def session(size: ClinicSize, index: int, rng: Rng) -> tuple[str, str, dict]:
    """The `index`-th session: a client's visit with a note."""
    client = rng.below(size.clients)
    note = f"{rng.pick(OBSERVATIONS)} {rng.pick(OBSERVATIONS)}"
    return (
        "sessions",
        f"session-{index:06}",
        {
            "caseload_id": caseload(client % max(size.therapists, 1)),
            "client": client_id(client),
            "started_at": 1_780_000_000_000 + index * 3_600_000,
            "note": note,
        },
    )


def clinic(size: ClinicSize, seed: int) -> list[tuple[str, str, dict]]:
    """Therapists, then clients, then sessions, as the Rust generator's callers make them."""
    rng = Rng(seed)
    writes = therapists(size, rng)
    writes += clients(size, rng)
    writes += [session(size, i, rng) for i in range(size.sessions)]
    return writes
