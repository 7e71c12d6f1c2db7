//! Series about access: authentication outcomes, rate limits, the audit trail, and usage per
//! API key. Labels are bounded: route groups, outcomes, destinations, event names, and key
//! names (at most `[auth] max_keys`); never a key or a client address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// management, inference, monitoring, auth
    pub group: &'static str,
    /// `key` (limited per API key) or `address` (per client address)
    pub scope: &'static str,
    /// `allowed` or `limited`
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HitLabels {
    pub group: &'static str,
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub group: &'static str,
    /// `success` (a key or a socket principal), `anonymous` (no key where none is needed),
    /// `missing` (no key where one is needed), `failure` (a wrong key, the wrong scope, a local
    /// user outside the socket group)
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// `journal` or `file`
    pub destination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key_name: String,
    pub group: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyTokenLabels {
    pub key_name: String,
    /// `prompt` or `completion`
    pub r#type: &'static str,
}

const GROUPS: [&str; 4] = ["management", "inference", "monitoring", "auth"];
const AUTH_OUTCOMES: [&str; 4] = ["success", "anonymous", "missing", "failure"];
const SCOPES: [&str; 2] = ["key", "address"];

/// Index of a label value in its list (the lists above are the only values used).
fn at(list: &[&str], v: &str) -> usize {
    list.iter().position(|x| *x == v).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct AccessMetrics {
    /// Handles of every (group, outcome) and (group, scope, outcome) series, made at start:
    /// the request path counts without a map lookup, and every series exists from the first
    /// scrape (at 0).
    auth_handles: Arc<[[Counter; 4]; 4]>,
    limit_handles: Arc<[[[Counter; 2]; 2]; 4]>,
    hit_handles: Arc<[[Counter; 2]; 4]>,
    pub rate_limit_requests: Family<LimitLabels, Counter>,
    pub rate_limit_hits: Family<HitLabels, Counter>,
    pub auth_requests: Family<AuthLabels, Counter>,
    pub audit_events: Family<EventLabels, Counter>,
    pub audit_write_failures: Family<DestinationLabels, Counter>,
    pub audit_pending: Gauge,
    pub key_requests: Family<KeyLabels, Counter>,
    pub key_tokens: Family<KeyTokenLabels, Counter>,
}

impl AccessMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let rate_limit_requests = Family::<LimitLabels, Counter>::default();
        let rate_limit_hits = Family::<HitLabels, Counter>::default();
        let auth_requests = Family::<AuthLabels, Counter>::default();
        let auth_handles = GROUPS.map(|group| {
            AUTH_OUTCOMES.map(|outcome| {
                auth_requests
                    .get_or_create(&AuthLabels { group, outcome })
                    .clone()
            })
        });
        let limit_handles = GROUPS.map(|group| {
            SCOPES.map(|scope| {
                ["allowed", "limited"].map(|outcome| {
                    rate_limit_requests
                        .get_or_create(&LimitLabels {
                            group,
                            scope,
                            outcome,
                        })
                        .clone()
                })
            })
        });
        let hit_handles = GROUPS.map(|group| {
            SCOPES.map(|scope| {
                rate_limit_hits
                    .get_or_create(&HitLabels { group, scope })
                    .clone()
            })
        });
        let m = Self {
            auth_handles: Arc::new(auth_handles),
            limit_handles: Arc::new(limit_handles),
            hit_handles: Arc::new(hit_handles),
            rate_limit_requests,
            rate_limit_hits,
            auth_requests,
            audit_events: Family::default(),
            audit_write_failures: Family::default(),
            audit_pending: Gauge::default(),
            key_requests: Family::default(),
            key_tokens: Family::default(),
        };
        r.register(
            "rate_limit_requests",
            "Requests checked against a rate limit, by route group, what was limited (key or address) and outcome (allowed, limited)",
            m.rate_limit_requests.clone(),
        );
        r.register(
            "rate_limit_hits",
            "Requests refused with 429 by a rate limit, by route group and what was limited (key or address)",
            m.rate_limit_hits.clone(),
        );
        r.register(
            "auth_requests",
            "Requests by route group and authentication outcome (success, anonymous, missing, failure)",
            m.auth_requests.clone(),
        );
        r.register(
            "audit_events",
            "Audit events recorded, by event and outcome (success, failure)",
            m.audit_events.clone(),
        );
        r.register(
            "audit_write_failures",
            "Audit records a destination could not take (they wait in memory), by destination (journal, file)",
            m.audit_write_failures.clone(),
        );
        r.register(
            "audit_pending_events",
            "Audit records waiting in memory for a destination to come back",
            m.audit_pending.clone(),
        );
        r.register(
            "key_requests",
            "Requests made with an API key, by key name and route group",
            m.key_requests.clone(),
        );
        r.register(
            "key_tokens",
            "Tokens of proxied requests made with an API key, by key name and type (prompt, completion)",
            m.key_tokens.clone(),
        );
        m
    }

    /// One request's authentication outcome in its route group.
    pub fn count_auth(&self, group: &str, outcome: &str) {
        self.auth_handles[at(&GROUPS, group)][at(&AUTH_OUTCOMES, outcome)].inc();
    }

    /// One rate-limit decision.
    pub fn count_limit(&self, group: &str, scope: &str, limited: bool) {
        let (g, s) = (at(&GROUPS, group), at(&SCOPES, scope));
        self.limit_handles[g][s][usize::from(limited)].inc();
        if limited {
            self.hit_handles[g][s].inc();
        }
    }

    /// Forgets a revoked key's series (they are bounded by the keys that exist).
    pub fn forget_key(&self, key_name: &str) {
        for group in ["management", "inference", "monitoring", "auth"] {
            self.key_requests.remove(&KeyLabels {
                key_name: key_name.to_string(),
                group,
            });
        }
        for t in ["prompt", "completion"] {
            self.key_tokens.remove(&KeyTokenLabels {
                key_name: key_name.to_string(),
                r#type: t,
            });
        }
    }
}
