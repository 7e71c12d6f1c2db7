//! `Live<T>`: a setting replaced whole on reload and read once per operation (an `Arc` clone
//! under a read lock held for no time), so an operation under way keeps what it began with.

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(v: T) -> Self {
        Self(RwLock::new(Arc::new(v)))
    }

    /// The value in force.
    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces it: the next `get` sees the new value.
    pub fn set(&self, v: T) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(v);
    }
}
