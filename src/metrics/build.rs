//! `llamactl_build_info`: which build is running.
//!
//! An info metric rather than a log line so dashboards can join any series on `version` and
//! alerts can spot a fleet running mixed versions after a partial upgrade.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub version: &'static str,
    pub arch: &'static str,
    pub os: &'static str,
}

/// The running build (a test may pass other labels to [`register`]).
pub(crate) const THIS_BUILD: BuildLabels = BuildLabels {
    version: env!("CARGO_PKG_VERSION"),
    arch: std::env::consts::ARCH,
    os: std::env::consts::OS,
};

/// Registers the info metric as `build` in `registry`, which is expected to carry the
/// `llamactl` prefix; the encoder appends `_info`.
pub(crate) fn register(registry: &mut Registry, labels: BuildLabels) {
    registry.register(
        "build",
        "Build information about llamactl; the value is always 1",
        Info::new(labels),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_has_version_arch_and_os() {
        let mut registry = Registry::with_prefix("llamactl");
        register(&mut registry, THIS_BUILD);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        let expected = format!(
            "# HELP llamactl_build_info Build information about llamactl; the value is always 1.\n\
             # TYPE llamactl_build_info gauge\n\
             llamactl_build_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            std::env::consts::OS
        );
        assert_eq!(out, expected);
    }
}
