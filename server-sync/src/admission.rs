//! How much push work the server takes on at once, so that a burst of pushes (hostile or not)
//! cannot hold more memory than a known bound: the bytes of decoded push bodies in flight,
//! the pushes merging Automerge data at once, and the pushes of one device at once. Each
//! record's Automerge data is bounded too, before Automerge parses it (its inflated size,
//! `Limits::max_document_bytes`), so a merging push holds at most a few such records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Decompressed push bodies held at once, in bytes (a body larger than this waits until
    /// no other is in flight).
    pub push_bytes_in_flight: usize,
    /// Pushes merging Automerge data at once.
    pub merging_pushes: usize,
    /// Pushes of one device in flight at once; more are refused with `rate_limited`.
    pub pushes_per_device: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        AdmissionLimits {
            push_bytes_in_flight: 64 << 20,
            merging_pushes: (2 * cores).max(4),
            pushes_per_device: 2,
        }
    }
}

/// Admission of pushes: each takes a device slot, then a share of the bytes in flight, then a
/// merging slot, each released when the push is done.
pub struct Admission {
    limits: AdmissionLimits,
    bytes: Arc<Semaphore>,
    merging: Arc<Semaphore>,
    per_device: Arc<Mutex<HashMap<i64, usize>>>,
}

/// A device's place among its pushes in flight, freed on drop.
pub struct DeviceSlot {
    device_id: i64,
    per_device: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.per_device);
        if let Some(count) = counts.get_mut(&self.device_id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.device_id);
            }
        }
    }
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            limits,
            bytes: Arc::new(Semaphore::new(limits.push_bytes_in_flight.max(1))),
            merging: Arc::new(Semaphore::new(limits.merging_pushes.max(1))),
            per_device: Arc::default(),
        }
    }

    /// A slot for one more push of `device_id`; `rate_limited` if it has as many in flight as
    /// it may.
    pub fn device_slot(&self, device_id: i64) -> Result<DeviceSlot, ServerError> {
        let mut counts = lock(&self.per_device);
        let count = counts.entry(device_id).or_default();
        if *count >= self.limits.pushes_per_device {
            return Err(ServerError::RateLimited {
                retry_after_secs: 1,
            });
        }
        *count += 1;
        Ok(DeviceSlot {
            device_id,
            per_device: Arc::clone(&self.per_device),
        })
    }

    /// Waits until `bytes` more may be in flight (all of them, for a body larger than the
    /// whole allowance).
    pub async fn bytes(&self, bytes: usize) -> OwnedSemaphorePermit {
        let wanted = bytes.clamp(1, self.limits.push_bytes_in_flight.max(1));
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        Arc::clone(&self.bytes)
            .acquire_many_owned(wanted)
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for a merging slot.
    pub async fn merging(&self) -> OwnedSemaphorePermit {
        Arc::clone(&self.merging)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What glibc's malloc is told when the server runs: at most one arena per core, and a fixed
/// threshold above which a block gets its own mapping. By default glibc raises that threshold
/// to the largest block freed so far, so after a burst of large pushes every large block comes
/// from arenas (up to eight per core) that keep what was freed: measured under the burst of
/// `tests/tests/server_process.rs`, 120 MiB stayed resident afterwards instead of 40.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_tunables() -> String {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    format!(
        "glibc.malloc.arena_max={}:glibc.malloc.mmap_threshold=131072",
        cores.max(2)
    )
}

/// Runs the server process again with [`malloc_tunables`] in `GLIBC_TUNABLES`, which glibc
/// reads only when a process starts (setting them from inside would take `unsafe` calls this
/// code base does not make). Returns only if the variable is set already (by this or by the
/// operator, whose setting is kept) or the program cannot be run again, which leaves the
/// defaults. Elsewhere than glibc's Linux, does nothing.
pub fn serve_with_tuned_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(program) = std::env::current_exe() else {
            return;
        };
        // Same process id, arguments and open files; only on failure does `exec` return.
        let _ = std::process::Command::new(program)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", malloc_tunables())
            .exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_device_has_a_bounded_number_of_pushes_in_flight() {
        let admission = Admission::new(AdmissionLimits {
            push_bytes_in_flight: 100,
            merging_pushes: 1,
            pushes_per_device: 2,
        });
        let first = admission.device_slot(1).unwrap();
        let _second = admission.device_slot(1).unwrap();
        assert!(matches!(
            admission.device_slot(1),
            Err(ServerError::RateLimited { .. })
        ));
        let _other = admission.device_slot(2).unwrap();
        drop(first);
        let _third = admission.device_slot(1).unwrap();
    }

    #[tokio::test]
    async fn bytes_in_flight_wait_for_room() {
        let admission = Admission::new(AdmissionLimits {
            push_bytes_in_flight: 100,
            merging_pushes: 1,
            pushes_per_device: 2,
        });
        let held = admission.bytes(60).await;
        let waiting = admission.bytes(60);
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(&mut waiting).await.is_none(),
            "no room yet"
        );
        drop(held);
        let _admitted = waiting.await;
        // Larger than the whole allowance: admitted alone.
        drop(_admitted);
        let _whole = admission.bytes(1 << 30).await;
    }

    /// Polls `future` once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
    ) -> Option<F::Output> {
        use std::task::Poll;
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *future).poll(cx) {
            Poll::Ready(value) => Poll::Ready(Some(value)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }
}
