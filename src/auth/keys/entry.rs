//! One API key as the store holds it: who it is (name, scope, source), what it may do
//! (instances, expiry, rights), its digest, and its use (last use, requests, tokens), which
//! `keys.json` keeps across restarts for keys made through the API.

use crate::config::Scope;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Where a key came from; only API keys can be revoked through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    Config,
    Credential,
}

/// One key, as the store knows it (never the key itself).
#[derive(Debug)]
pub struct KeyEntry {
    pub name: String,
    pub scope: Scope,
    pub(super) digest: [u8; 32],
    /// Instances an inference key may use; empty = all.
    pub instances: Vec<String>,
    pub created_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub can_start: bool,
    pub can_evict: bool,
    pub source: Source,
    pub(super) last_used_at: AtomicI64,
    /// Usage totals (kept in `keys.json` for API keys): requests, prompt and completion tokens.
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Changed since `keys.json` was last written.
    pub(super) dirty: AtomicBool,
}

impl KeyEntry {
    pub(super) fn build(k: Built) -> Self {
        Self {
            name: k.name,
            scope: k.scope,
            digest: k.digest,
            instances: k.instances,
            created_at: k.created_at,
            expires_at: k.expires_at,
            can_start: k.can_start,
            can_evict: k.can_evict,
            source: k.source,
            last_used_at: AtomicI64::new(k.usage.last_used_at.unwrap_or(0)),
            requests: AtomicU64::new(k.usage.requests),
            prompt_tokens: AtomicU64::new(k.usage.prompt_tokens),
            completion_tokens: AtomicU64::new(k.usage.completion_tokens),
            dirty: AtomicBool::new(false),
        }
    }

    pub fn last_used_at(&self) -> Option<i64> {
        Some(self.last_used_at.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// One more request made with this key.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Tokens of a proxied request made with this key.
    pub fn count_tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub(super) fn usage(&self) -> Usage {
        Usage {
            last_used_at: self.last_used_at(),
            requests: self.requests.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
    }

    pub fn may_use_instance(&self, name: &str) -> bool {
        self.instances.is_empty() || self.instances.iter().any(|i| i == name)
    }

    /// The listing: everything but the key and its digest.
    pub fn view(&self, now: i64) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "scope": self.scope,
            "source": self.source,
            "instances": self.instances,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "expired": self.expires_at.is_some_and(|e| e <= now),
            "last_used_at": self.last_used_at(),
            "requests": self.requests.load(Ordering::Relaxed),
            "prompt_tokens": self.prompt_tokens.load(Ordering::Relaxed),
            "completion_tokens": self.completion_tokens.load(Ordering::Relaxed),
            "can_start": self.can_start,
            "can_evict": self.can_evict,
        })
    }
}

/// What a key has been used for, kept across restarts for API keys.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(super) struct Usage {
    #[serde(default)]
    pub(super) last_used_at: Option<i64>,
    #[serde(default)]
    pub(super) requests: u64,
    #[serde(default)]
    pub(super) prompt_tokens: u64,
    #[serde(default)]
    pub(super) completion_tokens: u64,
}

/// The parts of a new entry.
pub(super) struct Built {
    pub(super) name: String,
    pub(super) scope: Scope,
    pub(super) digest: [u8; 32],
    pub(super) instances: Vec<String>,
    pub(super) created_at: Option<i64>,
    pub(super) expires_at: Option<i64>,
    pub(super) can_start: bool,
    pub(super) can_evict: bool,
    pub(super) source: Source,
    pub(super) usage: Usage,
}
