//! Rate limits: token buckets in memory, per API key (when a request has one) or per client
//! address (IPv6 by /64, so one host cannot walk its subnet), separately for each route group
//! (`[rate_limit]`). The `auth` group counts failed authentications and logins per address, to
//! slow key guessing. The admin socket is exempt: its users are root or trusted by group.
//!
//! Memory is bounded: buckets live in a few shards of at most `MAX_PER_SHARD` entries; a full
//! shard first forgets buckets that have refilled (nothing is lost: a full bucket is the same as
//! none), then its least recently touched tenth.

use crate::config::{LimitGroup, RateLimitConfig};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

const SHARDS: usize = 16;
const MAX_PER_SHARD: usize = 8192;

/// Who a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(Arc<str>),
    /// An IPv4 address, or the /64 of an IPv6 one.
    Address(IpAddr),
}

impl Subject {
    pub fn address(ip: IpAddr) -> Subject {
        Subject::Address(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }

    /// The metric label: what was limited.
    pub fn scope(&self) -> &'static str {
        match self {
            Subject::Key(_) => "key",
            Subject::Address(_) => "address",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// No limit applies (off, or a rate of 0).
    Unlimited,
    Allowed,
    /// Over the limit: try again in this many seconds.
    Limited {
        retry_after: u64,
    },
}

pub struct Limiter {
    config: RwLock<RateLimitConfig>,
    shards: Vec<Mutex<HashMap<(LimitGroup, Subject), Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config: RwLock::new(config),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// A reloaded `[rate_limit]`; buckets keep their state.
    pub fn set_config(&self, config: RateLimitConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Whether the group has a limit at all (cheap: lets the hot path skip building a subject).
    pub fn limits(&self, group: LimitGroup) -> bool {
        self.params(group).is_some()
    }

    fn params(&self, group: LimitGroup) -> Option<(f64, f64)> {
        let c = self.config.read().unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = c.bucket(group);
        (c.enabled() && rate > 0.0).then_some((rate, f64::from(burst.max(1))))
    }

    fn shard(&self, key: &(LimitGroup, Subject)) -> &Mutex<HashMap<(LimitGroup, Subject), Bucket>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Takes one token from the subject's bucket of the group (`cost` 1), or tells how long to
    /// wait. `take = false` only looks (whether a token is there), as before checking a key.
    pub fn check(&self, group: LimitGroup, subject: &Subject, take: bool, now: Instant) -> Verdict {
        let Some((rate, burst)) = self.params(group) else {
            return Verdict::Unlimited;
        };
        let key = (group, subject.clone());
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if !shard.contains_key(&key) && shard.len() >= MAX_PER_SHARD {
            prune(&mut shard, now, |g| self.params(g));
        }
        let b = shard.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            if take {
                b.tokens -= 1.0;
            }
            Verdict::Allowed
        } else {
            let wait = ((1.0 - b.tokens) / rate).ceil();
            Verdict::Limited {
                retry_after: wait.clamp(1.0, 86_400.0) as u64,
            }
        }
    }
}

/// Makes room in a full shard: buckets that have refilled go first, then the least recently
/// touched.
fn prune(
    shard: &mut HashMap<(LimitGroup, Subject), Bucket>,
    now: Instant,
    params: impl Fn(LimitGroup) -> Option<(f64, f64)>,
) {
    shard.retain(|(g, _), b| match params(*g) {
        Some((rate, burst)) => {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        }
        None => false,
    });
    if shard.len() >= MAX_PER_SHARD {
        // Still full of busy buckets: drop the least recently touched tenth at once, so a
        // flood of new addresses costs one scan per many of them, not one each.
        let mut ats: Vec<Instant> = shard.values().map(|b| b.at).collect();
        let cut = ats.len() / 10;
        let (_, threshold, _) = ats.select_nth_unstable(cut);
        let threshold = *threshold;
        shard.retain(|_, b| b.at > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bucket as Conf;
    use std::time::Duration;

    fn limiter(rate: f64, burst: u32) -> Limiter {
        Limiter::new(RateLimitConfig {
            management: Conf {
                requests_per_second: Some(rate),
                burst: Some(burst),
            },
            ..Default::default()
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let l = limiter(2.0, 3);
        let s = Subject::Key("k".into());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                l.check(LimitGroup::Management, &s, true, t0),
                Verdict::Allowed
            );
        }
        assert_eq!(
            l.check(LimitGroup::Management, &s, true, t0),
            Verdict::Limited { retry_after: 1 }
        );
        // Half a second later, one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            l.check(LimitGroup::Management, &s, true, t1),
            Verdict::Allowed
        );
        assert!(matches!(
            l.check(LimitGroup::Management, &s, true, t1),
            Verdict::Limited { .. }
        ));
        // Others have their own buckets; looking takes nothing.
        let other = Subject::address("10.0.0.1".parse().unwrap());
        for _ in 0..10 {
            assert_eq!(
                l.check(LimitGroup::Management, &other, false, t1),
                Verdict::Allowed
            );
        }
        // Inference has no limit by default.
        assert_eq!(
            l.check(LimitGroup::Inference, &s, true, t1),
            Verdict::Unlimited
        );
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_v4_is_v4() {
        let a = Subject::address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Subject::address("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = Subject::address("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Subject::address("::ffff:10.1.2.3".parse().unwrap()),
            Subject::address("10.1.2.3".parse().unwrap())
        );
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let l = limiter(1.0, 1);
        let t = Instant::now();
        for i in 0..(SHARDS * MAX_PER_SHARD + 5000) as u32 {
            let s = Subject::address(IpAddr::V4(i.into()));
            l.check(LimitGroup::Management, &s, true, t);
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * MAX_PER_SHARD, "{total}");
    }

    #[test]
    fn off_means_unlimited() {
        let l = Limiter::new(RateLimitConfig {
            enabled: Some(false),
            ..Default::default()
        });
        let s = Subject::Key("k".into());
        assert_eq!(
            l.check(LimitGroup::Auth, &s, true, Instant::now()),
            Verdict::Unlimited
        );
    }
}
