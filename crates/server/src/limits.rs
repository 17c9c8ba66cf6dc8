//! The gateway's limits on each caller, for every protocol: sessions open per identity, failed
//! sign-ins per source address and per claimed identity, and requests per second per identity.
//! Rates are kept with `governor` (GCRA). Adapters keep their own listener and result-size
//! limits; every refusal, theirs and these, is counted in `gatehouse_limited_total{limit}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_core::pipeline::Limit;
use gatehouse_core::{Identity, IdentityKind};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitSettings;

/// A refusal by a limit, with when trying again can succeed.
#[derive(Debug, Clone)]
pub struct Refused {
    pub limit: Limit,
    pub message: String,
    pub retry_after: Option<Duration>,
}

/// A sign-in lockout that just began, to be recorded.
#[derive(Debug, Clone)]
pub struct Lockout {
    pub limit: Limit,
    /// The address or the claimed name.
    pub key: String,
    pub until: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Locked {
    Source(IpAddr),
    Identity(String),
}

type IdentityKey = (IdentityKind, String);

/// The per-caller limits and their state.
pub struct Limits {
    settings: LimitSettings,
    sessions: Mutex<HashMap<IdentityKey, usize>>,
    requests: Option<DefaultKeyedRateLimiter<IdentityKey>>,
    failures_by_source: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failures_by_identity: Option<DefaultKeyedRateLimiter<String>>,
    locked: Mutex<HashMap<Locked, Instant>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// A session counted against its identity's limit until it is dropped.
#[derive(Debug)]
pub struct SessionSlot {
    limits: Arc<Limits>,
    key: Option<IdentityKey>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut sessions = self.limits.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = sessions.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    sessions.remove(&key);
                }
            }
        }
    }
}

/// `n` failures per `window`, as a quota: all of them at once, then one per `window / n`.
fn failure_quota(n: NonZeroU32, window: Duration) -> Quota {
    let period = window / n.get();
    Quota::with_period(period.max(Duration::from_millis(1))).unwrap_or_else(|| Quota::per_second(n)).allow_burst(n)
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        let window = settings.auth_failure_window;
        Arc::new(Limits {
            requests: settings
                .requests
                .map(|(rate, burst)| RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))),
            failures_by_source: settings.auth_failures_per_source.map(|n| RateLimiter::keyed(failure_quota(n, window))),
            failures_by_identity: settings
                .auth_failures_per_identity
                .map(|n| RateLimiter::keyed(failure_quota(n, window))),
            sessions: Mutex::default(),
            locked: Mutex::default(),
            clock: DefaultClock::default(),
            settings,
        })
    }

    /// Counts a new session of `identity`, or refuses it when the identity has its most open.
    pub fn open_session(self: &Arc<Self>, identity: &Identity) -> Result<SessionSlot, Refused> {
        let Some(max) = self.settings.sessions_per_identity else {
            return Ok(SessionSlot { limits: self.clone(), key: None });
        };
        let key = (identity.kind, identity.name.clone());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let open = sessions.entry(key.clone()).or_insert(0);
        if *open >= max {
            return Err(Refused {
                limit: Limit::IdentitySessions,
                message: format!(
                    "too many connections for {}: it has {max} sessions open, the most allowed (limits.sessions_per_identity)",
                    identity.entity_ref()
                ),
                retry_after: None,
            });
        }
        *open += 1;
        Ok(SessionSlot { limits: self.clone(), key: Some(key) })
    }

    /// Refuses a sign-in attempt from a locked-out address or for a locked-out name, without
    /// checking its credential.
    pub fn sign_in_allowed(&self, source: Option<IpAddr>, claimed: Option<&str>) -> Result<(), Refused> {
        let now = Instant::now();
        let locked = self.locked.lock().unwrap_or_else(|p| p.into_inner());
        let check = |key: Locked, limit: Limit, what: String| match locked.get(&key) {
            Some(until) if *until > now => {
                let wait = *until - now;
                Err(Refused {
                    limit,
                    message: format!("too many failed sign-ins {what}; try again in {}", seconds(wait)),
                    retry_after: Some(wait),
                })
            }
            _ => Ok(()),
        };
        if let Some(ip) = source {
            check(Locked::Source(ip), Limit::AuthFailuresSource, format!("from {ip}"))?;
        }
        if let Some(name) = claimed {
            check(Locked::Identity(name.to_string()), Limit::AuthFailuresIdentity, format!("for \"{name}\""))?;
        }
        Ok(())
    }

    /// Counts a failed sign-in. Returns the lockouts it starts: an address or a name that has
    /// failed more often than its limit allows within the window is refused until the window
    /// lets it try once more.
    pub fn sign_in_failed(&self, source: Option<IpAddr>, claimed: Option<&str>) -> Vec<Lockout> {
        let mut started = Vec::new();
        let now = self.clock.now();
        let mut lock = |key: Locked, wait: Duration, limit: Limit, shown: String| {
            self.locked.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Instant::now() + wait);
            started.push(Lockout { limit, key: shown, until: wait });
        };
        if let (Some(ip), Some(limiter)) = (source, &self.failures_by_source)
            && let Err(not_until) = limiter.check_key(&ip)
        {
            lock(Locked::Source(ip), not_until.wait_time_from(now), Limit::AuthFailuresSource, ip.to_string());
        }
        if let (Some(name), Some(limiter)) = (claimed, &self.failures_by_identity) {
            let name = name.to_string();
            if let Err(not_until) = limiter.check_key(&name) {
                let wait = not_until.wait_time_from(now);
                lock(Locked::Identity(name.clone()), wait, Limit::AuthFailuresIdentity, name);
            }
        }
        started
    }

    /// Takes one request from `identity`'s rate, or refuses it.
    pub fn request(&self, identity: &Identity) -> Result<(), Refused> {
        let (Some(limiter), Some((rate, burst))) = (&self.requests, self.settings.requests) else { return Ok(()) };
        let key = (identity.kind, identity.name.clone());
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Refused {
                limit: Limit::Requests,
                message: format!(
                    "rate limit exceeded: {} may make {rate} requests per second (bursts of {burst}); try again in {} ms",
                    identity.entity_ref(),
                    wait.as_millis().max(1)
                ),
                retry_after: Some(wait),
            }
        })
    }

    /// Forgets state that no longer limits anyone (keys whose rate is back to full, lockouts
    /// that ended), so that many distinct callers do not grow memory for ever.
    pub fn prune(&self) {
        if let Some(l) = &self.requests {
            l.retain_recent();
        }
        if let Some(l) = &self.failures_by_source {
            l.retain_recent();
        }
        if let Some(l) = &self.failures_by_identity {
            l.retain_recent();
        }
        let now = Instant::now();
        self.locked.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, until| *until > now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            sessions_per_identity: Some(2),
            requests: Some((NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap())),
            auth_failures_per_source: NonZeroU32::new(3),
            auth_failures_per_identity: NonZeroU32::new(2),
            auth_failure_window: Duration::from_secs(60),
        }
    }

    fn identity(name: &str) -> Identity {
        Identity { kind: IdentityKind::Service, name: name.into(), groups: Default::default(), expires_at: None }
    }

    #[test]
    fn sessions_per_identity_are_counted_until_dropped() {
        let limits = Limits::new(settings());
        let (a, b) = (identity("a"), identity("b"));
        let first = limits.open_session(&a).unwrap();
        let _second = limits.open_session(&a).unwrap();
        let refused = limits.open_session(&a).unwrap_err();
        assert_eq!(refused.limit, Limit::IdentitySessions);
        assert!(refused.message.contains("Service::\"a\"") && refused.message.contains('2'), "{}", refused.message);
        assert!(limits.open_session(&b).is_ok(), "another identity has its own count");
        drop(first);
        assert!(limits.open_session(&a).is_ok(), "a closed session frees its place");
    }

    #[test]
    fn requests_get_their_burst_then_the_rate() {
        let limits = Limits::new(settings());
        let a = identity("a");
        for _ in 0..3 {
            limits.request(&a).unwrap();
        }
        let refused = limits.request(&a).unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert!(refused.retry_after.unwrap() <= Duration::from_secs(1));
        assert!(limits.request(&identity("b")).is_ok());
    }

    #[test]
    fn failed_sign_ins_lock_out_the_source_and_the_name() {
        let limits = Limits::new(settings());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        // Two failures per name are allowed; the third locks the name out (for any address).
        assert!(limits.sign_in_failed(Some(ip), Some("alice")).is_empty());
        assert!(limits.sign_in_failed(Some(other), Some("alice")).is_empty());
        let started = limits.sign_in_failed(Some(other), Some("alice"));
        assert_eq!(started.len(), 1);
        assert_eq!((started[0].limit, started[0].key.as_str()), (Limit::AuthFailuresIdentity, "alice"));
        let refused = limits.sign_in_allowed(Some("198.51.100.1".parse().unwrap()), Some("alice")).unwrap_err();
        assert_eq!(refused.limit, Limit::AuthFailuresIdentity);
        assert!(refused.message.contains("alice") && refused.retry_after.is_some(), "{}", refused.message);
        assert!(limits.sign_in_allowed(Some(ip), Some("bob")).is_ok(), "bob and this address are not locked");
        // Three failures per address are allowed; the fourth locks it out, whatever the name.
        assert!(limits.sign_in_failed(Some(ip), Some("carol")).is_empty());
        assert!(limits.sign_in_failed(Some(ip), Some("dave")).is_empty());
        let started = limits.sign_in_failed(Some(ip), Some("frank"));
        assert!(started.iter().any(|l| l.limit == Limit::AuthFailuresSource && l.key == "192.0.2.7"), "{started:?}");
        let refused = limits.sign_in_allowed(Some(ip), Some("erin")).unwrap_err();
        assert_eq!(refused.limit, Limit::AuthFailuresSource);
        assert!(limits.sign_in_allowed(Some("192.0.2.9".parse().unwrap()), None).is_ok());
        limits.prune();
        assert!(limits.sign_in_allowed(Some(ip), None).is_err(), "pruning keeps lockouts in force");
    }
}
