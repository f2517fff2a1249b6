//! The per-device request limit: each device may make `per_second` requests a second on
//! average, with bursts up to `burst` (governor's GCRA, keyed by device id).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// After this many checks, devices whose limit has fully recovered are forgotten, so that the
/// map of devices does not keep one entry per device that ever made a request.
const FORGET_EVERY: u32 = 4096;

/// Request limits by device id.
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<i64>>,
    checks: AtomicU32,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests a second and bursts of `burst`; a rate of 0
    /// disables it.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimiter {
            limiter,
            checks: AtomicU32::new(0),
        }
    }

    /// Takes one request from the device's allowance, or says how many seconds to wait.
    pub fn check(&self, device_id: i64) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&device_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Depends on the four checks coming within a second of each other, which in-process
    /// they do by orders of magnitude.
    #[test]
    fn a_burst_is_allowed_then_refused_per_device() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(limiter.check(1).is_ok());
        }
        assert_eq!(limiter.check(1), Err(1));
        assert!(
            limiter.check(2).is_ok(),
            "another device has its own allowance"
        );
        assert!(
            RateLimiter::new(0, 0).check(1).is_ok(),
            "a rate of 0 disables the limit"
        );
    }
}
