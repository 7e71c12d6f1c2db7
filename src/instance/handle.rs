//! An instance as the proxy's hot path sees it: one `Handle` per instance for its whole life,
//! found by model name without the instance table's lock, holding what a proxied request needs
//! (the backend's address and key, whether it is ready) and what it changes (requests in
//! flight, last use) as atomics. The supervisor keeps the handle in step with the table.

use crate::config::Live;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Where a backend is reached and the key it wants (its own `api_key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// `host:port`; `None` before a port is assigned.
    pub addr: Option<String>,
    pub backend_key: Option<String>,
}

pub struct Handle {
    name: String,
    target: Live<Target>,
    ready: AtomicBool,
    in_flight: AtomicU32,
    /// Nanoseconds after `base()` plus one; 0 = never used.
    last_used: AtomicU64,
    /// A slot for the layer above (the proxy keeps its metric handles here), filled once.
    ext: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// The process's reference instant for `last_used`.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn encode(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base()).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

impl Handle {
    pub fn new(name: &str, target: Target) -> Self {
        Self {
            name: name.to_string(),
            target: Live::new(target),
            ready: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            last_used: AtomicU64::new(0),
            ext: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn target(&self) -> Arc<Target> {
        self.target.get()
    }

    pub(super) fn set_target(&self, t: Target) {
        if *self.target.get() != t {
            self.target.set(t);
        }
    }

    /// Health probe says ready (kept in step with the table's state by the supervisor).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn last_used(&self) -> Option<Instant> {
        match self.last_used.load(Ordering::Acquire) {
            0 => None,
            n => Some(base() + std::time::Duration::from_nanos(n - 1)),
        }
    }

    /// The last use, or `now` recorded as one (the idle clock of an instance first seen
    /// running).
    pub(super) fn last_used_or(&self, now: Instant) -> Instant {
        let _ =
            self.last_used
                .compare_exchange(0, encode(now), Ordering::AcqRel, Ordering::Acquire);
        self.last_used().unwrap_or(now)
    }

    fn touch(&self) {
        self.last_used
            .store(encode(Instant::now()), Ordering::Release);
    }

    /// Marks a request in flight until the guard is dropped (when the response body ends or
    /// the client goes away).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    /// The layer above's data for this instance, made on first use.
    pub fn ext<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.ext
            .get_or_init(|| Arc::new(make()))
            .downcast_ref::<T>()
    }
}

/// A proxied request in flight (see `Handle::begin`).
pub struct InFlight(Arc<Handle>);

impl InFlight {
    pub fn handle(&self) -> &Arc<Handle> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let h = &self.0;
        // Never below zero, whatever happens.
        let _ = h
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        h.touch();
    }
}

/// Model names to handles: instance names, and aliases (names win over aliases; of two
/// instances with one alias, the first by name).
#[derive(Default)]
pub struct Routes {
    names: HashMap<String, Arc<Handle>>,
    aliases: HashMap<String, Arc<Handle>>,
}

impl Routes {
    pub fn build<'a>(entries: impl Iterator<Item = (&'a Arc<Handle>, Vec<String>)>) -> Self {
        let mut r = Routes::default();
        for (h, aliases) in entries {
            r.names.insert(h.name.clone(), h.clone());
            for a in aliases {
                r.aliases.entry(a).or_insert_with(|| h.clone());
            }
        }
        r
    }

    /// The instance a request's `model` names: the instance name, `instance/model` (a backend
    /// serving several models), or an alias.
    pub fn resolve(&self, model: &str) -> Option<&Arc<Handle>> {
        self.names
            .get(model)
            .or_else(|| {
                let (inst, _) = model.split_once('/')?;
                self.names.get(inst)
            })
            .or_else(|| self.aliases.get(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_and_last_use() {
        let h = Arc::new(Handle::new("a", Target::default()));
        assert_eq!(h.last_used(), None);
        let t0 = Instant::now();
        let g1 = h.begin();
        let g2 = h.begin();
        assert_eq!(h.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(h.in_flight(), 0);
        assert!(h.last_used().is_some_and(|t| t >= t0));
        let h2 = Handle::new("b", Target::default());
        let now = Instant::now();
        assert_eq!(h2.last_used_or(now), h2.last_used().unwrap());
    }

    #[test]
    fn routes_prefer_names_then_instance_slash_model_then_aliases() {
        let a = Arc::new(Handle::new("a", Target::default()));
        let b = Arc::new(Handle::new("b", Target::default()));
        let r = Routes::build(
            [
                (&a, vec!["x".to_string(), "b".to_string()]),
                (&b, vec!["x".to_string()]),
            ]
            .into_iter(),
        );
        let name = |m: &str| r.resolve(m).map(|h| h.name().to_string());
        assert_eq!(name("a").as_deref(), Some("a"));
        assert_eq!(name("b").as_deref(), Some("b"), "a name wins over an alias");
        assert_eq!(
            name("x").as_deref(),
            Some("a"),
            "the first instance's alias"
        );
        assert_eq!(name("b/m.gguf").as_deref(), Some("b"));
        assert_eq!(name("x/m"), None, "an alias is not an instance prefix");
        assert_eq!(name("nope"), None);
    }
}
