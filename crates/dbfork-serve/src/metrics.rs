//! `/metrics`: what the service did and holds, in the OpenMetrics text
//! format Prometheus scrapes (written by the `prometheus-client` crate):
//!
//! - `dbfork_serve_clones{template, state}`: clones by state (making, ready,
//!   leased, dropping), per template hash;
//! - `dbfork_serve_leases_total`: clones handed to tests;
//! - `dbfork_serve_lease_wait_seconds`: how long a request for one waited;
//! - `dbfork_serve_clone_seconds`: how long making one took;
//! - `dbfork_serve_leases_reclaimed_total{reason}`: leases ended by the
//!   service, not the client (`expiry`: `--lease-ttl`; `disconnect`: the
//!   Unix-socket connection it was asked on closed; `discard`: the
//!   template discarded or every template reset);
//! - `dbfork_serve_evictions_total`: templates whose ready clones were
//!   dropped to make room (`--max-databases`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A template's hash and its clones: (making, ready, leased, dropping).
pub type TemplateCounts = (String, crate::service::Counts);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloneState {
    template: String,
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub leases: Counter,
    pub lease_wait: Histogram,
    pub clone_seconds: Histogram,
    pub reclaimed: Family<Reason, Counter>,
    pub evictions: Counter,
    clones: Family<CloneState, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dbfork_serve");
        let leases = Counter::default();
        // 0.1 ms to about 26 s.
        let lease_wait = Histogram::new(exponential_buckets(0.0001, 4.0, 10));
        // 5 ms to about 10 s.
        let clone_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let reclaimed = Family::<Reason, Counter>::default();
        let evictions = Counter::default();
        let clones = Family::<CloneState, Gauge>::default();
        registry.register("clones", "Clones by template and state", clones.clone());
        registry.register("leases", "Clones handed to tests", leases.clone());
        registry.register(
            "lease_wait_seconds",
            "How long a request for a clone waited",
            lease_wait.clone(),
        );
        registry.register(
            "clone_seconds",
            "How long making a clone took",
            clone_seconds.clone(),
        );
        registry.register(
            "leases_reclaimed",
            "Leases the service ended, by reason",
            reclaimed.clone(),
        );
        registry.register(
            "evictions",
            "Templates whose ready clones were dropped to make room",
            evictions.clone(),
        );
        Metrics {
            registry,
            leases,
            lease_wait,
            clone_seconds,
            reclaimed,
            evictions,
            clones,
        }
    }
}

impl Metrics {
    /// The text of a scrape, with the clones' states as they are now.
    pub fn encode(&self, counts: &[TemplateCounts]) -> String {
        self.clones.clear();
        for (template, (making, ready, leased, dropping)) in counts {
            for (state, n) in [
                ("making", making),
                ("ready", ready),
                ("leased", leased),
                ("dropping", dropping),
            ] {
                let labels = CloneState {
                    template: template.clone(),
                    state,
                };
                self.clones.get_or_create(&labels).set(*n as i64);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
