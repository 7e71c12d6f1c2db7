//! Access control: who is asking (a [`Principal`]), what a route needs (a [`Scope`]), and
//! whether the one may use the other. The model (README "Security"):
//! - the admin socket (`/run/llamactl/llamactl.sock`, 0660, group `[auth] socket_group`): root and
//!   members of that group are management principals `uid:<n>(<user>)`, by the kernel's
//!   peer credentials; nobody else;
//! - TCP: API keys (`Authorization: Bearer`, or `X-API-Key` as upstream accepts) of scope
//!   `management` (everything), `inference` (`/v1/*`, `/infill`) or `monitoring` (`/metrics`,
//!   health, service discovery). Management needs a key by default; inference and monitoring
//!   do when `[auth] require_*_auth` says so;
//! - before either, the browser defences of [`browser`].
//!
//! This module decides; `http::guard` applies it to every request, so no route can be
//! reached around it.

pub mod browser;
pub mod keys;
pub mod limit;
pub mod peer;

pub use crate::config::Scope;

use crate::config::{AuthConfig, LimitGroup};
use crate::host::users;
use axum::http::{header, HeaderMap, StatusCode};
use keys::{KeyEntry, KeyStore, Rejected};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Where a connection came from.
#[derive(Clone, Debug)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix(peer::PeerCred),
}

impl Peer {
    /// For logs and audit records: the address, or `unix`.
    pub fn source(&self) -> String {
        match self {
            Peer::Tcp(a) => a.to_string(),
            Peer::Unix(_) => "unix".into(),
        }
    }
}

/// Who a request acts for.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A local user on the admin socket (root, or a member of the socket group).
    Local { uid: u32, user: Option<String> },
    /// An API key.
    Key(Arc<KeyEntry>),
    /// A TCP request without credentials, on a route that does not require them.
    Anonymous,
}

impl Principal {
    /// How logs and audit records name it (never the key itself).
    pub fn actor(&self) -> String {
        match self {
            Principal::Local { uid, user } => {
                format!("uid:{uid}({})", user.as_deref().unwrap_or("?"))
            }
            Principal::Key(k) => format!("key:{}", k.name),
            Principal::Anonymous => "anonymous".into(),
        }
    }

    /// Whether it may send requests to the instance `name` (an inference key's allow-list).
    pub fn may_use_instance(&self, name: &str) -> bool {
        match self {
            Principal::Key(k) => k.may_use_instance(name),
            _ => true,
        }
    }

    /// May start a stopped instance on demand.
    pub fn can_start(&self) -> bool {
        match self {
            Principal::Key(k) => k.can_start,
            _ => true,
        }
    }

    /// May cause an LRU eviction.
    pub fn can_evict(&self) -> bool {
        match self {
            Principal::Key(k) => k.can_evict,
            _ => true,
        }
    }
}

/// A refusal: status, a machine-readable code, a message for people, and for 401/403 the
/// `WWW-Authenticate` challenge (for 429, `Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub challenge: Option<String>,
    pub retry_after: Option<u64>,
    /// A failed authentication (a wrong, expired or revoked key, the wrong scope, a local user
    /// outside the socket group), with who it claimed to be when known: an `auth.failure`
    /// event, and a token of the address's `auth` bucket. A missing key is not one.
    pub failure: Option<Option<String>>,
}

impl Denied {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
            retry_after: None,
            failure: None,
        }
    }

    fn challenge(mut self, c: String) -> Self {
        self.challenge = Some(c);
        self
    }

    fn auth_failure(mut self, actor: Option<String>) -> Self {
        self.failure = Some(actor);
        self
    }

    /// 429: over a rate limit.
    pub fn rate_limited(group: &str, retry_after: u64) -> Self {
        let mut d = Denied::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!("too many {group} requests; retry in {retry_after} s ([rate_limit.{group}])"),
        );
        d.retry_after = Some(retry_after);
        d
    }
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A principal of this scope (or none, where `[auth] require_*_auth` says so).
    Scope(Scope),
    /// Any valid key, whatever its scope, or a socket principal: login and logout.
    AnyKey,
}

impl Need {
    /// The rate-limit group of such routes.
    pub fn group(self) -> LimitGroup {
        match self {
            Need::Scope(Scope::Management) => LimitGroup::Management,
            Need::Scope(Scope::Inference) => LimitGroup::Inference,
            Need::Scope(Scope::Monitoring) => LimitGroup::Monitoring,
            Need::AnyKey => LimitGroup::Auth,
        }
    }

    /// The scope its errors are shaped for (OpenAI's for inference).
    pub fn scope(self) -> Scope {
        match self {
            Need::Scope(s) => s,
            Need::AnyKey => Scope::Management,
        }
    }
}

/// What a route needs, from its route template (`None`: no route matched). Anything not listed
/// here is management: a new route is protected until someone decides otherwise.
pub fn route_need(template: Option<&str>, metrics_path: &str) -> Need {
    match template {
        Some("/api/v1/auth/login" | "/api/v1/auth/logout") => Need::AnyKey,
        t => Need::Scope(route_scope(t, metrics_path)),
    }
}

fn route_scope(template: Option<&str>, metrics_path: &str) -> Scope {
    match template {
        Some("/v1/{*rest}" | "/v1/models" | "/infill") => Scope::Inference,
        Some(
            "/api/health"
            | "/api/health/live"
            | "/api/system/health"
            | "/api/v1/sd/prometheus"
            | "/api/v1/instances/{name}/health"
            | "/api/instances/{name}/health",
        ) => Scope::Monitoring,
        Some(t) if t == metrics_path => Scope::Monitoring,
        _ => Scope::Management,
    }
}

/// The token a request presents: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
/// (Not a query parameter, as upstream also takes: URLs end up in logs and histories.)
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The socket group as resolved from the group database.
struct SocketGroup {
    name: String,
    group: Option<users::Group>,
}

/// The daemon's access-control state: the keys and the admin socket's group.
pub struct Auth {
    pub keys: KeyStore,
    pub limiter: limit::Limiter,
    group: RwLock<SocketGroup>,
    credentials_dir: Option<PathBuf>,
}

fn resolve_group(name: &str) -> SocketGroup {
    SocketGroup {
        name: name.to_string(),
        group: users::group(name),
    }
}

impl Auth {
    /// Opens `<state_dir>/keys.json` and loads the operator's keys: `[[auth.keys]]` and the
    /// systemd credential `llamactl.keys` in `credentials_dir` (`$CREDENTIALS_DIRECTORY`).
    pub fn open(
        state_dir: &Path,
        cfg: &AuthConfig,
        limits: &crate::config::RateLimitConfig,
        credentials_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        let a = Self {
            keys: KeyStore::open(state_dir),
            limiter: limit::Limiter::new(limits.clone()),
            group: RwLock::new(resolve_group(&cfg.socket_group)),
            credentials_dir,
        };
        a.reload(cfg, limits)?;
        Ok(a)
    }

    /// Re-reads the operator's keys, the socket group and the rate limits (at start and on
    /// SIGHUP). On error nothing changes.
    pub fn reload(
        &self,
        cfg: &AuthConfig,
        limits: &crate::config::RateLimitConfig,
    ) -> Result<(), String> {
        let credential = match &self.credentials_dir {
            Some(d) => keys::read_credential(d)?,
            None => Vec::new(),
        };
        self.keys
            .set_provisioned(&cfg.keys, &credential, cfg.max_keys as usize)?;
        *self.group.write().unwrap_or_else(|p| p.into_inner()) = resolve_group(&cfg.socket_group);
        self.limiter.set_config(limits.clone());
        Ok(())
    }

    /// The socket group's id, if the group exists.
    pub fn socket_gid(&self) -> Option<u32> {
        self.group
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .group
            .as_ref()
            .map(|g| g.gid)
    }

    /// Authenticates a request and checks it may use a route that needs `need`.
    pub fn authorize(
        &self,
        cfg: &AuthConfig,
        peer: &Peer,
        headers: &HeaderMap,
        need: Need,
        now: i64,
    ) -> Result<Principal, Denied> {
        match peer {
            Peer::Unix(cred) => self.local(cred),
            Peer::Tcp(_) => self.by_key(cfg, headers, need, now),
        }
    }

    fn local(&self, cred: &peer::PeerCred) -> Result<Principal, Denied> {
        let user = cred.user.clone();
        let principal = Principal::Local {
            uid: cred.uid,
            user: user.clone(),
        };
        if cred.uid == 0 {
            return Ok(principal);
        }
        let g = self.group.read().unwrap_or_else(|p| p.into_inner());
        let member = g
            .group
            .as_ref()
            .is_some_and(|grp| cred.in_group(grp.gid, &grp.members, user.as_deref()));
        if member {
            return Ok(principal);
        }
        Err(Denied::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "{} is neither root nor a member of group {:?}, which may use llamactld's socket",
                principal.actor(),
                g.name
            ),
        )
        .auth_failure(Some(principal.actor())))
    }

    fn by_key(
        &self,
        cfg: &AuthConfig,
        headers: &HeaderMap,
        need: Need,
        now: i64,
    ) -> Result<Principal, Denied> {
        let required = match need {
            Need::Scope(Scope::Management) => cfg.require_management_auth,
            Need::Scope(Scope::Inference) => cfg.require_inference_auth,
            Need::Scope(Scope::Monitoring) => cfg.require_monitoring_auth,
            Need::AnyKey => true,
        };
        let wanted = match need {
            Need::Scope(s) => s.as_str(),
            Need::AnyKey => "any",
        };
        let realm = "Bearer realm=\"llamactl\"";
        let invalid = |msg: String, actor: Option<String>| {
            Denied::new(StatusCode::UNAUTHORIZED, "invalid_api_key", msg)
                .challenge(format!("{realm}, error=\"invalid_token\""))
                .auth_failure(actor)
        };
        let Some(token) = presented_key(headers) else {
            if !required {
                return Ok(Principal::Anonymous);
            }
            return Err(Denied::new(
                StatusCode::UNAUTHORIZED,
                "api_key_required",
                format!(
                    "this endpoint needs an API key of scope {wanted} (send Authorization: Bearer <key>, or X-API-Key: <key>)"
                ),
            )
            .challenge(realm.to_string()));
        };
        let key = match self.keys.authenticate(token, now) {
            Ok(k) => k,
            Err(Rejected::Unknown) if !required && !keys::looks_like_ours(token) => {
                return Ok(Principal::Anonymous)
            }
            Err(Rejected::Unknown) => return Err(invalid("invalid API key".into(), None)),
            Err(Rejected::Expired { name, at }) => {
                return Err(invalid(
                    format!(
                        "the API key {name:?} expired at {}",
                        crate::config::time::format_rfc3339(at)
                    ),
                    Some(format!("key:{name}")),
                ))
            }
        };
        if let Need::Scope(scope) = need {
            if required && !key.scope.covers(scope) {
                return Err(Denied::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_scope",
                    format!(
                        "the API key {:?} has scope {}; this endpoint needs {}",
                        key.name,
                        key.scope.as_str(),
                        scope.as_str()
                    ),
                )
                .challenge(format!(
                    "{realm}, error=\"insufficient_scope\", scope=\"{}\"",
                    scope.as_str()
                ))
                .auth_failure(Some(format!("key:{}", key.name))));
            }
        }
        Ok(Principal::Key(key))
    }
}

#[cfg(test)]
mod tests;
