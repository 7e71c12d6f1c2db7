//! `[auth]`: who may use the API. Names follow upstream Llamactl where it has them
//! (`require_management_auth`, `require_inference_auth`); the model is in README "Security".

use super::secret::Secret;
use super::time::parse_rfc3339;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Members of this group (and root) may use the admin socket as management principals.
    pub socket_group: String,
    /// Management (the REST API) over TCP needs a management key.
    pub require_management_auth: bool,
    /// Inference (`/v1/*`, `/infill`) over TCP needs a key. Off by default while the listener
    /// is loopback-only; the daemon refuses a non-loopback `host` without it unless
    /// `allow_unauthenticated_inference` says so.
    pub require_inference_auth: bool,
    /// `/metrics`, the health endpoints and service discovery need a key.
    pub require_monitoring_auth: bool,
    /// Allows a non-loopback `host` with `require_inference_auth = false` (inference open to
    /// the network, deliberately).
    pub allow_unauthenticated_inference: bool,
    /// Allows `require_management_auth = false` (anyone who reaches the port may start
    /// processes): for a listener only trusted peers reach.
    pub allow_unauthenticated_management: bool,
    /// Keys provisioned by the operator, by digest (`[[auth.keys]]`).
    pub keys: Vec<KeyConfig>,
    /// Most keys that may exist (API and provisioned): per-key metric series are bounded by it.
    pub max_keys: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            socket_group: "llamactl".into(),
            require_management_auth: true,
            require_inference_auth: false,
            require_monitoring_auth: false,
            allow_unauthenticated_inference: false,
            allow_unauthenticated_management: false,
            keys: Vec::new(),
            max_keys: 1000,
        }
    }
}

/// What a key may do. `management` includes the other two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Management,
    Inference,
    Monitoring,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Management => "management",
            Scope::Inference => "inference",
            Scope::Monitoring => "monitoring",
        }
    }

    /// Whether a key of this scope may use a route of scope `route`.
    pub fn covers(self, route: Scope) -> bool {
        self == Scope::Management || self == route
    }
}

/// One operator-provisioned key: `[[auth.keys]]` in the config (digest only), or an entry of
/// the systemd credential `llamactl.keys` (digest, or the key itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's name, as `llamactl keys list`, audit records and metrics show it.
    pub name: String,
    /// `management` (the REST API, and the other two), `inference` (`/v1/*`, `/infill`) or
    /// `monitoring` (`/metrics`, health endpoints, service discovery).
    pub scope: Scope,
    /// `sha256:<64 hex digits>` of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The key itself: only in the credential file, which systemd keeps private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// Instances an inference key may use; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// When the key stops working: an RFC 3339 date (a string or a TOML date-time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Expiry>,
    /// May start a stopped instance on demand.
    #[serde(default = "yes")]
    pub can_start: bool,
    /// May cause an LRU eviction under `[instances] max_running`.
    #[serde(default = "yes")]
    pub can_evict: bool,
}

/// serde's `default` for rights that are granted unless taken away.
pub fn yes() -> bool {
    true
}

/// A key's expiry in Unix seconds, written in the config as an RFC 3339 date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry(pub i64);

impl Serialize for Expiry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::time::format_rfc3339(self.0))
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A string, or TOML's own date-time type (`expires = 2027-01-01T00:00:00Z`).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Toml(toml::value::Datetime),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(t) => t,
            Raw::Toml(dt) => dt.to_string(),
        };
        parse_rfc3339(&text)
            .map(Expiry)
            .map_err(serde::de::Error::custom)
    }
}

/// Key names: what `keys list` shows and audit records name.
pub fn validate_key_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid key name {name:?}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

/// The digest of a `sha256:<hex>` string.
pub fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{text:?} must start with \"sha256:\""))?;
    let mut out = [0u8; 32];
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a sha256 digest is 64 hex digits".into());
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
            .map_err(|_| "a sha256 digest is 64 hex digits".to_string())?;
    }
    Ok(out)
}

/// `[rate_limit]`: token buckets per API key, else per client address (IPv6 by /64), for each
/// route group. The admin socket is exempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Rate limiting on or off; unset = on.
    pub enabled: Option<bool>,
    /// The REST API (management scope).
    pub management: Bucket,
    /// `/v1/*` and `/infill`; no limit by default (a model server's throughput is its own limit).
    pub inference: Bucket,
    /// `/metrics`, the health endpoints and service discovery.
    pub monitoring: Bucket,
    /// Failed authentications and logins, per client address: slows down key guessing.
    pub auth: Bucket,
}

/// A token bucket as written: `burst` requests at once, refilled at `requests_per_second` (0 =
/// no limit). What is left out takes the group's default (`RateLimitConfig::bucket`), so
/// `requests_per_second = 10` alone keeps a sensible burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bucket {
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Refill rate (0 = no limit). Unset: the group's default, 50 for `management` and
    /// `monitoring`, 0 for `inference`, 2 for `auth`.
    pub requests_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Requests allowed at once. Unset: the group's default, 200 for `management` and
    /// `monitoring`, 20 for `auth`; otherwise twice the rate (at least 1), or none without a rate.
    pub burst: Option<u32>,
}

/// A route group, as the rate limits and their metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitGroup {
    Management,
    Inference,
    Monitoring,
    Auth,
}

impl LimitGroup {
    pub const ALL: [LimitGroup; 4] = [
        LimitGroup::Management,
        LimitGroup::Inference,
        LimitGroup::Monitoring,
        LimitGroup::Auth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitGroup::Management => "management",
            LimitGroup::Inference => "inference",
            LimitGroup::Monitoring => "monitoring",
            LimitGroup::Auth => "auth",
        }
    }

    /// (requests per second, burst) when the config says nothing: enough for any normal client
    /// and a Prometheus; inference unlimited (a model server's throughput is its own limit, and
    /// one local application may send thousands of small embedding requests a second); failed
    /// authentications slow.
    fn defaults(self) -> (f64, u32) {
        match self {
            LimitGroup::Management | LimitGroup::Monitoring => (50.0, 200),
            LimitGroup::Inference => (0.0, 0),
            LimitGroup::Auth => (2.0, 20),
        }
    }
}

impl RateLimitConfig {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The group's (requests per second, burst) in force; a rate of 0 is no limit.
    pub fn bucket(&self, g: LimitGroup) -> (f64, u32) {
        let b = match g {
            LimitGroup::Management => self.management,
            LimitGroup::Inference => self.inference,
            LimitGroup::Monitoring => self.monitoring,
            LimitGroup::Auth => self.auth,
        };
        let (rate, burst) = g.defaults();
        let r = b.requests_per_second.unwrap_or(rate);
        let default_burst = if burst > 0 {
            burst
        } else if r > 0.0 {
            // Twice the rate, at least one, when the group has no default burst.
            (r * 2.0).ceil().clamp(1.0, u32::MAX as f64) as u32
        } else {
            0
        };
        (r, b.burst.unwrap_or(default_burst))
    }
}
