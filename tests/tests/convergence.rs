//! Convergence under faults: seeded scenarios of 2 to 8 devices writing, syncing through the
//! real server logic over a network that drops, duplicates and replays messages, cuts devices
//! off and restarts devices and the server, while an administrator erases records' content.
//! After the network heals, every device must hold the same records and the same document
//! heads.
//!
//! `FIELDSYNC_SIM_SCENARIOS` (default 1000) and `FIELDSYNC_SIM_STEPS` (default 40) set the
//! size; `FIELDSYNC_SIM_SEED=N` replays one scenario. A failing seed prints itself: add it to
//! `REGRESSION_SEEDS` with the fix.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use fieldsync_tests::sim::{Tally, run_scenario};

/// Seeds that once failed; they run first, every time.
const REGRESSION_SEEDS: &[u64] = &[872];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

/// Runs `seeds` on one thread; the scenarios of a test run in several such groups in parallel.
fn run_seeds(seeds: impl IntoIterator<Item = u64>) -> (usize, Tally) {
    let steps = env_number("FIELDSYNC_SIM_STEPS", 40) as usize;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut scenarios = 0;
    let mut total = Tally::default();
    for seed in seeds {
        match catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run_scenario(seed, steps))
        })) {
            Ok(tally) => {
                scenarios += 1;
                total.add(&tally);
            }
            Err(panic) => {
                eprintln!(
                    "convergence scenario {seed} failed; replay it with \
                     FIELDSYNC_SIM_SEED={seed} cargo test -p fieldsync-tests --test convergence"
                );
                resume_unwind(panic)
            }
        }
    }
    (scenarios, total)
}

#[test]
fn devices_converge_over_an_unreliable_network() {
    let seeds: Vec<u64> = match std::env::var("FIELDSYNC_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("FIELDSYNC_SIM_SEED must be a number")],
        Err(_) => {
            let count = env_number("FIELDSYNC_SIM_SCENARIOS", 1000);
            REGRESSION_SEEDS.iter().copied().chain(0..count).collect()
        }
    };
    // Two groups, one per core of a CI machine.
    let (odd, even): (Vec<u64>, Vec<u64>) = seeds.iter().partition(|s| *s % 2 == 1);
    let other = std::thread::spawn(move || run_seeds(odd));
    let (mine, mut total) = run_seeds(even);
    let (theirs, tally) = other.join().unwrap_or_else(|panic| resume_unwind(panic));
    total.add(&tally);
    println!(
        "{} scenarios converged: {} writes, {} syncs of which {} failed on the network, {} \
         restarts, {} grant changes, {} writes refused and taken back, {} restores, {} \
         erasures",
        mine + theirs,
        total.writes,
        total.syncs,
        total.failed_syncs,
        total.restarts,
        total.grant_changes,
        total.refused_writes,
        total.restores,
        total.erasures
    );
    assert_eq!(mine + theirs, seeds.len());
    // The faults did happen: a run where nothing failed would prove little.
    if seeds.len() >= 20 {
        assert!(total.failed_syncs > 0, "no sync ever failed");
        assert!(total.refused_writes > 0, "no write was ever refused");
        assert!(total.restores > 0, "no device was ever restored");
        assert!(total.erasures > 0, "no record was ever erased");
    }
}
