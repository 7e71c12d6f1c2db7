//! One integration-test binary (one link, one sandbox boot), with a module per area.

#[macro_use]
mod util;

mod cli;
mod direct;
mod instances;
mod packaging;
mod proxy;
mod resources;
mod security;
mod unit;
