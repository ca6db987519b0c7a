//! A cap on how fast a pull's layers download together, so that one
//! workspace's pull (or a lazy start's background completion) leaves the
//! node's link to its neighbours and to on-demand reads.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Bytes per second, shared by every layer of the pulls given it.
#[derive(Debug)]
pub struct Bandwidth {
    limiter: DefaultDirectRateLimiter,
    /// The most one wait admits: a bigger body chunk waits in pieces.
    burst: NonZeroU32,
}

impl Bandwidth {
    /// `None` for 0 (no cap); rates beyond what the limiter counts
    /// (4 GiB/s) are no cap either.
    pub fn new(bytes_per_sec: u64) -> Option<Bandwidth> {
        let rate = NonZeroU32::new(u32::try_from(bytes_per_sec).ok()?)?;
        // A tenth of a second's worth (at least 64 KiB, the size of a
        // large body chunk): smooth enough that a cap is felt as a rate,
        // not as bursts and stalls.
        let burst = NonZeroU32::new((rate.get() / 10).max(64 << 10).min(rate.get()))?;
        Some(Bandwidth {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            burst,
        })
    }

    /// Waits until `bytes` more may pass. Waiting before the next read of
    /// a body leaves the rest in the socket: TCP slows the sender down.
    pub async fn take(&self, bytes: usize) {
        let mut left = u32::try_from(bytes).unwrap_or(u32::MAX);
        while let Some(n) = NonZeroU32::new(left.min(self.burst.get())) {
            // Cannot fail: n is at most the burst.
            let _ = self.limiter.until_n_ready(n).await;
            left -= n.get();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn zero_and_huge_rates_are_no_cap() {
        assert!(Bandwidth::new(0).is_none());
        assert!(Bandwidth::new(u64::from(u32::MAX) + 1).is_none());
        assert!(Bandwidth::new(1).is_some());
    }

    #[tokio::test]
    async fn bytes_pass_at_the_rate_after_the_burst() {
        // 1 MiB/s, burst 104857 bytes: 400 KiB more than the burst needs
        // about 0.3 s, chunks bigger than the burst included.
        let cap = Bandwidth::new(1 << 20).unwrap();
        let started = Instant::now();
        cap.take(104_857).await;
        cap.take(200 << 10).await;
        cap.take(100 << 10).await;
        cap.take(100 << 10).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
