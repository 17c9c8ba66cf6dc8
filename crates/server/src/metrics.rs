//! Prometheus metrics, served at `/metrics` on the API listener in the OpenMetrics text format.
//! Counters are kept by the code paths that cause them; gauges are read when scraped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
/// Labels whose values are all known in advance: counted without allocating.
type StaticLabels<const N: usize> = [(&'static str, &'static str); N];

/// Every metric the gateway exposes.
pub struct Metrics {
    registry: Registry,
    pub sessions: Family<Labels, Counter>,
    pub requests: Family<StaticLabels<2>, Counter>,
    pub upstream_errors: Family<Labels, Counter>,
    pub authentications: Family<Labels, Counter>,
    masked: Family<Labels, Counter>,
    reviews: Family<Labels, Counter>,
    limited: Family<Labels, Counter>,
    held: Gauge,
    pub audit_events: Counter,
    pub audit_failures: Counter,
    pub audit_commit_seconds: Histogram,
    audit_queue_depth: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("gatehouse");
        let sessions = Family::<Labels, Counter>::default();
        registry.register("sessions", "Sessions opened, by protocol", sessions.clone());
        let requests = Family::<StaticLabels<2>, Counter>::default();
        registry.register(
            "requests",
            "Requests decided, by protocol and decision (allow, review, deny)",
            requests.clone(),
        );
        // Series exist from the start (at zero) so dashboards and alerts can be written against
        // stable names.
        let reviews = Family::<Labels, Counter>::default();
        for status in ["created", "approved", "denied", "expired"] {
            let _ = reviews.get_or_create(&vec![("status", status.to_string())]);
        }
        registry.register("reviews", "Reviews, by status (created, approved, denied, expired)", reviews.clone());
        let limited = Family::<Labels, Counter>::default();
        for limit in gatehouse_core::pipeline::Limit::ALL {
            let _ = limited.get_or_create(&vec![("limit", limit.as_str().to_string())]);
        }
        registry.register(
            "limited",
            "Connections, sign-ins and requests refused by a limit, by limit",
            limited.clone(),
        );
        let held = Gauge::default();
        registry.register("held_requests", "Requests held on the wire waiting for a review", held.clone());
        let masked = Family::<Labels, Counter>::default();
        for detector in ["email", "credit_card", "iban", "ssn", "phone", "ip", "secret"] {
            let _ = masked.get_or_create(&vec![("detector", detector.to_string())]);
        }
        registry.register("masked_values", "Values masked in responses, by detector", masked.clone());
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failures reaching or talking to a resource, by connection",
            upstream_errors.clone(),
        );
        let authentications = Family::<Labels, Counter>::default();
        registry.register(
            "authentications",
            "Caller authentications, by method (token, oidc) and result",
            authentications.clone(),
        );
        let audit_events = Counter::default();
        registry.register("audit_events", "Audit events committed", audit_events.clone());
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit batches that could not be committed (their requests were refused)",
            audit_failures.clone(),
        );
        let audit_commit_seconds = Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]);
        registry.register(
            "audit_commit_seconds",
            "Time to commit one batch of audit events",
            audit_commit_seconds.clone(),
        );
        let audit_queue_depth = Gauge::default();
        registry.register("audit_queue_depth", "Requests waiting for the audit writer", audit_queue_depth.clone());
        let build = Family::<Labels, Gauge>::default();
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())]).set(1);
        registry.register("build_info", "The running version", build);
        Arc::new(Metrics {
            masked,
            reviews,
            limited,
            held,
            registry,
            sessions,
            requests,
            upstream_errors,
            authentications,
            audit_events,
            audit_failures,
            audit_commit_seconds,
            audit_queue_depth,
        })
    }

    /// Counts a review reaching `status` (`created`, `approved`, `denied`, `expired`).
    pub fn review(&self, status: &str) {
        self.reviews.get_or_create(&vec![("status", status.to_string())]).inc();
    }

    /// Counts a refusal by a limit.
    pub fn limited(&self, limit: gatehouse_core::pipeline::Limit) {
        self.limited.get_or_create(&vec![("limit", limit.as_str().to_string())]).inc();
    }

    /// One more (`1`) or one fewer (`-1`) request held for review.
    pub fn held(&self, delta: i64) {
        self.held.inc_by(delta);
    }

    /// Counts values masked by one detector (`custom:NAME` for custom ones).
    pub fn masked(&self, detector: &str, n: u64) {
        self.masked.get_or_create(&vec![("detector", detector.to_string())]).inc_by(n);
    }

    /// Counts a request's decision.
    pub fn request(&self, protocol: &'static str, decision: &'static str) {
        self.requests.get_or_create(&[("protocol", protocol), ("decision", decision)]).inc();
    }

    pub fn session(&self, protocol: &str) {
        self.sessions.get_or_create(&vec![("protocol", protocol.to_string())]).inc();
    }

    pub fn authentication(&self, method: &str, result: &str) {
        self.authentications.get_or_create(&vec![("method", method.to_string()), ("result", result.to_string())]).inc();
    }

    pub fn upstream_error(&self, connection: &str) {
        self.upstream_errors.get_or_create(&vec![("connection", connection.to_string())]).inc();
    }

    /// The observer the audit writer calls after each batch.
    pub fn audit_observer(self: &Arc<Self>) -> gatehouse_audit::CommitObserver {
        let metrics = self.clone();
        Arc::new(move |events, elapsed, ok| {
            metrics.audit_commit_seconds.observe(elapsed.as_secs_f64());
            if ok {
                metrics.audit_events.inc_by(events as u64);
            } else {
                metrics.audit_failures.inc();
            }
        })
    }

    /// The text to serve, with gauges read now.
    pub fn render(&self, audit: &gatehouse_audit::WriterStats) -> Result<String, std::fmt::Error> {
        self.audit_queue_depth.set(i64::try_from(audit.queued.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
