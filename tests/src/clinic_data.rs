//! Realistic clinic data, generated deterministically from a seed: therapists, clients with
//! goals and notes, and therapy sessions with notes. The benchmarks, the demo and the
//! console's browser tests share it.

use fieldsync_core::{Fields, Write};
use serde_json::json;

/// How much data to make.
#[derive(Debug, Clone, Copy)]
pub struct ClinicSize {
    /// Therapists (one caseload each).
    pub therapists: usize,
    /// Clients, spread over the caseloads.
    pub clients: usize,
    /// Sessions, spread over the clients.
    pub sessions: usize,
}

impl ClinicSize {
    /// 50 therapists, 5,000 clients, 100,000 sessions.
    pub const FULL: ClinicSize = ClinicSize {
        therapists: 50,
        clients: 5_000,
        sessions: 100_000,
    };
}

/// A small, fast, seeded generator (xorshift64*), so that every run makes the same clinic.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const FIRST: &[&str] = &[
    "Sam", "Ada", "Noor", "Leo", "Mia", "Ravi", "Zoe", "Omar", "Ivy", "Jon", "Lena", "Kai",
];
const LAST: &[&str] = &[
    "Rivera",
    "Okafor",
    "Lindqvist",
    "Tanaka",
    "Moreau",
    "Nowak",
    "Haddad",
    "Quinn",
    "Ruiz",
];
const OBSERVATIONS: &[&str] = &[
    "Worked on s-sounds in initial position.",
    "Good focus for the first twenty minutes.",
    "Tired after school; shortened the session.",
    "Used picture cards for sequencing.",
    "Practised stairs with the handrail.",
    "Parent joined for the last ten minutes.",
    "Tolerated the new splint well.",
    "Followed two-step instructions without prompts.",
];
const GOALS: &[&str] = &[
    "articulation",
    "fluency",
    "fine motor",
    "gross motor",
    "feeding",
    "social",
];

/// The caseload of therapist `t`.
pub fn caseload(t: usize) -> String {
    format!("caseload-{t:03}")
}

/// The id of client `c`.
pub fn client_id(c: usize) -> String {
    format!("client-{c:05}")
}

/// Inserts for the therapists.
pub fn therapists(size: ClinicSize, rng: &mut Rng) -> Vec<Write> {
    (0..size.therapists)
        .map(|t| {
            insert(
                "therapists",
                format!("therapist-{t:03}"),
                json!({
                    "team_id": format!("team-{}", t % 5),
                    "name": format!("{} {}", rng.pick(FIRST), rng.pick(LAST)),
                }),
            )
        })
        .collect()
}

/// Inserts for the clients, each in its therapist's caseload, with goals and a note.
pub fn clients(size: ClinicSize, rng: &mut Rng) -> Vec<Write> {
    (0..size.clients)
        .map(|c| {
            let therapist = c % size.therapists.max(1);
            insert("clients", client_id(c), json!({
                "caseload_id": caseload(therapist),
                "name": format!("{} {}", rng.pick(FIRST), rng.pick(LAST)),
                "birth_year": 2008 + rng.below(14) as i64,
                "active": rng.below(10) != 0,
                "risk_score": rng.below(100) as f64 / 10.0,
                "next_visit": 1_790_000_000_000i64 + rng.below(90) as i64 * 86_400_000,
                "notes": rng.pick(OBSERVATIONS),
                "goals": {"primary": rng.pick(GOALS), "secondary": [rng.pick(GOALS), rng.pick(GOALS)]},
                "therapist": format!("therapist-{therapist:03}"),
            }))
        })
        .collect()
}

/// The `index`-th session: a client's visit with a note (4 fields).
pub fn session(size: ClinicSize, index: usize, rng: &mut Rng) -> Write {
    let client = rng.below(size.clients);
    insert(
        "sessions",
        format!("session-{index:06}"),
        json!({
            "caseload_id": caseload(client % size.therapists.max(1)),
            "client": client_id(client),
            "started_at": 1_780_000_000_000i64 + index as i64 * 3_600_000,
            "note": format!("{} {}", rng.pick(OBSERVATIONS), rng.pick(OBSERVATIONS)),
        }),
    )
}

fn insert(collection: &str, id: String, fields: serde_json::Value) -> Write {
    let fields: Fields = fields.as_object().cloned().expect("an object");
    Write::Insert {
        collection: collection.to_owned(),
        id: Some(id),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_clinic_and_it_fits_the_schema() {
        let size = ClinicSize {
            therapists: 3,
            clients: 20,
            sessions: 50,
        };
        let make = || {
            let mut rng = Rng::new(42);
            let mut writes = therapists(size, &mut rng);
            writes.extend(clients(size, &mut rng));
            writes.extend((0..size.sessions).map(|i| session(size, i, &mut rng)));
            writes
        };
        assert_eq!(make(), make());
        let dir = tempfile::tempdir().unwrap();
        let store = crate::open_device(&dir.path().join("a.db"));
        assert_eq!(store.write_batch(make()).unwrap().len(), 73);
        assert!(store.orphans("sessions").unwrap().is_empty());
    }
}
