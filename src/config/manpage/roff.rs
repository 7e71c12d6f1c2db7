//! llamactl.toml(5) as roff, from the sections `super` reads out of the config types, and the
//! tests that keep `man/llamactl.toml.5` equal to it.

use super::{sections, Reload, Section};
use std::fmt::Write as _;

const PAGE: &str = "man/llamactl.toml.5";
const UPDATE_VAR: &str = "LLAMACTL_UPDATE_MAN";
const REGENERATE: &str = "LLAMACTL_UPDATE_MAN=1 cargo test --lib config::manpage";

/// Doc-comment text as roff: backslashes escaped, `code` in bold, non-ASCII by name, and no
/// line starting with a control character.
fn roff(text: &str) -> String {
    let mut out = String::from("\\&");
    let mut bold = false;
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '`' => {
                out.push_str(if bold { "\\fR" } else { "\\fB" });
                bold = !bold;
            }
            '-' => out.push_str("\\-"),
            '…' => out.push_str("..."),
            '—' => out.push_str("\\(em"),
            '–' => out.push_str("\\(en"),
            '→' => out.push_str("\\(->"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "\\[u{:04X}]", c as u32);
            }
        }
    }
    if bold {
        out.push_str("\\fR");
    }
    out
}

/// The whole page.
fn render(sections: &[Section]) -> String {
    let mut p = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        p,
        ".\\\" Generated from src/config/ by src/config/manpage/; do not edit.\n\
         .\\\" Regenerate: {REGENERATE}\n\
         .TH LLAMACTL.TOML 5 \"\" \"llamactl {version}\" \"llamactl\"\n\
         .SH NAME\n\
         llamactl.toml \\- configuration file of llamactld\n\
         .SH SYNOPSIS\n\
         .B /etc/llamactl/config.toml\n\
         .SH DESCRIPTION\n\
         .BR llamactld (8)\n\
         reads its configuration from a TOML file: \\fB\\-\\-config\\fR, else \
         \\fB$LLAMACTL_CONFIG\\fR, else \\fB/etc/llamactl/config.toml\\fR (when that is missing \
         the built\\-in defaults apply). Every key may be left out and then has the default shown \
         here. Unknown keys and values of the wrong type are errors that name the file, line \
         and key; \\fBllamactld \\-\\-check\\-config\\fR checks a file.\n\
         .PP\n\
         \\fBsystemctl reload llamactl\\fR (SIGHUP) reads the file again; a file that does not \
         parse or validate is rejected and the running configuration stays in force. Keys marked \
         \\fBreload\\fR take effect then (new requests and new instance starts use them); keys \
         marked \\fBrestart\\fR only when the daemon next starts (the reload logs a warning, \
         \\(lqchanged settings take effect on restart\\(rq, naming them).\n\
         .PP\n\
         Durations are strings such as \"500ms\", \"30s\", \"5m\", \"1h\", or an integer number of \
         seconds. Sizes are in bytes. \"unset\" means the key has no value by default; the text \
         says what applies then.\n\
         .SH SECTIONS AND KEYS"
    );
    for s in sections.iter().filter(|s| !s.keys.is_empty()) {
        let _ = writeln!(p, ".SS {}\n{}", roff(&s.header), roff(&s.doc));
        for k in &s.keys {
            let reload = match k.reload {
                Reload::Live => "reload",
                Reload::Restart => "restart",
            };
            let _ = writeln!(
                p,
                ".TP\n.B {}\n{}; default: {}; \\fB{reload}\\fR.\n.br\n{}",
                k.name,
                roff(&k.ty),
                roff(&k.default),
                roff(&k.doc)
            );
        }
    }
    let _ = writeln!(
        p,
        ".SH FILES\n\
         .TP\n\
         .B /etc/llamactl/config.toml\n\
         The configuration. The packages install it with every key commented out at its \
         default, each with a longer explanation.\n\
         .SH EXAMPLE\n\
         .nf\n\
         [server]\n\
         host = \"0.0.0.0\"\n\
         port = 8080\n\
         \n\
         [auth]\n\
         require_inference_auth = true\n\
         \n\
         [logging]\n\
         level = \"debug\"\n\
         .fi\n\
         .SH SEE ALSO\n\
         .BR llamactld (8),\n\
         .BR llamactl (1),\n\
         .BR systemd.service (5),\n\
         .BR systemd.resource\\-control (5)"
    );
    p
}

/// The page as the config types make it now.
fn page() -> String {
    render(&sections())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::Value;
    use std::path::Path;

    /// The shipped page is the one the types make (`LLAMACTL_UPDATE_MAN=1` rewrites it).
    #[test]
    fn shipped_page_is_current() {
        let page = page();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PAGE);
        if std::env::var_os(UPDATE_VAR).is_some() {
            std::fs::write(&path, &page).expect("write the man page");
            return;
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == page,
            "{PAGE} is stale: regenerate with `{REGENERATE}`"
        );
    }

    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    leaves(&format!("{prefix}{k}."), x, out);
                }
            }
            _ => out.push(prefix.trim_end_matches('.').to_string()),
        }
    }

    /// Every key `Config::default()` serialises is on the page, and every key on the page
    /// outside arrays of tables is one of them (or an `Option` serde leaves out).
    #[test]
    fn the_page_has_every_key_and_no_other() {
        let mut want = Vec::new();
        leaves(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut want,
        );
        let mut have = Vec::new();
        for s in sections().iter().filter(|s| !s.header.starts_with("[[")) {
            let section = s.header.trim_matches(['[', ']']);
            have.push((section.to_string(), "unset".into()));
            for k in &s.keys {
                have.push((format!("{section}.{}", k.name), k.default.clone()));
            }
        }
        for w in &want {
            assert!(have.iter().any(|(h, _)| h == w), "{w} is not on the page");
        }
        for (h, default) in &have {
            assert!(
                want.contains(h) || default == "unset",
                "the page has {h}, which the config does not"
            );
        }
    }

    #[test]
    fn keys_carry_type_default_and_reload() {
        let s = sections();
        let find = |section: &str, name: &str| {
            s.iter()
                .filter(|x| x.header == section)
                .flat_map(|x| &x.keys)
                .find(|k| k.name == name)
                .unwrap_or_else(|| panic!("{section} {name}"))
        };
        let port = find("[server]", "port");
        assert_eq!(
            (port.ty.as_str(), port.default.as_str()),
            ("integer", "8080")
        );
        assert_eq!(port.reload, Reload::Restart);
        assert_eq!(find("[logging]", "level").reload, Reload::Live);
        assert_eq!(find("[logging]", "level").default, "\"info\"");
        assert_eq!(find("[server]", "socket").default, "unset");
        assert_eq!(find("[[auth.keys]]", "name").default, "required");
        assert_eq!(find("[[auth.keys]]", "can_start").default, "true");
        assert_eq!(
            find("[[logging.destinations]]", "format").default,
            "\"json\""
        );
        assert!(find("[audit]", "on_failure")
            .ty
            .starts_with("one of \"deny\", \"allow\""));
        assert_eq!(roff(".a `b` \\ …"), "\\&.a \\fBb\\fR \\e ...");
    }
}
