//! A per-device token bucket: each device may make `per_second` requests a second on average,
//! with bursts up to `burst`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Token buckets by device id.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests a second and bursts of `burst`; a rate of 0
    /// disables it.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the device's bucket, or says how many seconds to wait.
    pub fn check(&self, device_id: i64) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = buckets.entry(device_id).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        let refill = now.duration_since(bucket.refilled_at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_per_device() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(limiter.check(1).is_ok());
        }
        assert_eq!(limiter.check(1), Err(1));
        assert!(
            limiter.check(2).is_ok(),
            "another device has its own bucket"
        );
        assert!(
            RateLimiter::new(0, 0).check(1).is_ok(),
            "a rate of 0 disables the limit"
        );
    }
}
