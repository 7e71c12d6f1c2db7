//! The packaging tree: Prometheus examples and alert rules (promtool), deb/rpm metadata.

use crate::util::{repo, run};
use std::process::Command;

#[test]
fn packaging_checks_pass() {
    let out = run(Command::new("bash")
        .arg("packaging/check.sh")
        .current_dir(repo()));
    assert!(
        out.status.success(),
        "packaging/check.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
