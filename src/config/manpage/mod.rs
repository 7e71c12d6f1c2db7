//! llamactl.toml(5), generated from the config types: the keys, their types and doc comments
//! are read from `src/config/*.rs` (with `syn`), the defaults from the real parser and
//! `Config::default()`, the reload behaviour from `reload::RELOAD`. A test only: it compares
//! the page with `man/llamactl.toml.5` and, with `LLAMACTL_UPDATE_MAN=1`, rewrites it. So a key
//! added to a config struct (with its doc comment) appears in the page at the next regeneration,
//! and one without a doc comment fails the test.

use super::reload::{reload_of, Reload};
use super::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A field of a struct or of an enum variant, as serde sees it.
#[derive(Clone)]
struct Field {
    name: String,
    doc: String,
    ty: syn::Type,
    /// `#[serde(default)]` on the field or its container, or an `Option`: may be left out.
    optional: bool,
}

enum Item {
    Struct {
        doc: String,
        fields: Vec<Field>,
    },
    /// Unit variants (a string value), or, with `tag`, an internally tagged table.
    Enum {
        tag: Option<String>,
        variants: Vec<(String, String, Vec<Field>)>,
    },
}

/// One key of the page.
struct Key {
    name: String,
    ty: String,
    default: String,
    reload: Reload,
    doc: String,
}

/// A `[section]` or `[[array]]` of the page, with the keys directly in it.
struct Section {
    header: String,
    doc: String,
    keys: Vec<Key>,
}

fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("doc")) {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            {
                lines.push(s.value().trim().to_string());
            }
        }
    }
    lines.join(" ").trim().to_string()
}

/// The `#[serde(...)]` settings we need: name → value ("" for a flag).
fn serde_of(attrs: &[syn::Attribute]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        a.parse_nested_meta(|m| {
            let name = m
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let value = if m.input.peek(syn::Token![=]) {
                m.value()?.parse::<syn::LitStr>()?.value()
            } else {
                String::new()
            };
            out.insert(name, value);
            Ok(())
        })
        .expect("a #[serde] attribute syn cannot read");
    }
    out
}

fn renamed(ident: &str, rule: Option<&String>) -> String {
    match rule.map(String::as_str) {
        Some("lowercase") => ident.to_lowercase(),
        Some("snake_case") => {
            let mut s = String::new();
            for (i, c) in ident.chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    s.push('_');
                }
                s.extend(c.to_lowercase());
            }
            s
        }
        None => ident.to_string(),
        Some(r) => panic!("rename_all = {r:?}: teach config::manpage::renamed"),
    }
}

fn fields_of(fields: &syn::Fields, container_default: bool) -> Vec<Field> {
    fields
        .iter()
        .filter_map(|f| {
            let serde = serde_of(&f.attrs);
            let name = serde
                .get("rename")
                .cloned()
                .or_else(|| f.ident.as_ref().map(|i| i.to_string()))?;
            Some(Field {
                name,
                doc: doc_of(&f.attrs),
                optional: container_default
                    || serde.contains_key("default")
                    || outer(&f.ty).0 == "Option",
                ty: f.ty.clone(),
            })
        })
        .collect()
}

/// Every struct and enum of `src/config/`, by name.
fn items() -> BTreeMap<String, Item> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut out = BTreeMap::new();
    // Newtype variants (`Syslog(SyslogDestination)`): (enum, variant, the struct they hold),
    // given that struct's fields once every item is known.
    let mut newtypes = Vec::new();
    for e in std::fs::read_dir(&dir).expect("src/config") {
        let path = e.expect("src/config entry").path();
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for item in file.items {
            match item {
                // Tuple structs (`HumanDuration`, `Secret`) are values, not tables.
                syn::Item::Struct(s) if matches!(s.fields, syn::Fields::Named(_)) => {
                    let serde = serde_of(&s.attrs);
                    let fields = fields_of(&s.fields, serde.contains_key("default"));
                    let doc = doc_of(&s.attrs);
                    out.insert(s.ident.to_string(), Item::Struct { doc, fields });
                }
                syn::Item::Enum(en) => {
                    let serde = serde_of(&en.attrs);
                    for (i, v) in en.variants.iter().enumerate() {
                        if let syn::Fields::Unnamed(u) = &v.fields {
                            if let [f] = u.unnamed.iter().collect::<Vec<_>>()[..] {
                                newtypes.push((en.ident.to_string(), i, outer(&f.ty).0));
                            }
                        }
                    }
                    let variants =
                        en.variants
                            .iter()
                            .map(|v| {
                                let name =
                                    serde_of(&v.attrs).get("rename").cloned().unwrap_or_else(
                                        || renamed(&v.ident.to_string(), serde.get("rename_all")),
                                    );
                                (name, doc_of(&v.attrs), fields_of(&v.fields, false))
                            })
                            .collect();
                    let tag = serde.get("tag").cloned();
                    out.insert(en.ident.to_string(), Item::Enum { tag, variants });
                }
                _ => {}
            }
        }
    }
    for (en, i, held) in newtypes {
        let Some(Item::Struct { doc, fields }) = out.get(&held) else {
            continue;
        };
        let (doc, fields) = (doc.clone(), fields.clone());
        if let Some(Item::Enum { variants, .. }) = out.get_mut(&en) {
            let v = &mut variants[i];
            if v.1.is_empty() {
                v.1 = doc;
            }
            v.2 = fields;
        }
    }
    out
}

/// A type's last path segment and its generic arguments (`Option<Vec<String>>` → `Option`,
/// `[Vec<String>]`); `[T; N]` → `[N]`, `[T]`.
fn outer(ty: &syn::Type) -> (String, Vec<syn::Type>) {
    match ty {
        syn::Type::Path(p) => {
            let Some(seg) = p.path.segments.last() else {
                return (String::new(), Vec::new());
            };
            let args = match &seg.arguments {
                syn::PathArguments::AngleBracketed(a) => a
                    .args
                    .iter()
                    .filter_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (seg.ident.to_string(), args)
        }
        syn::Type::Array(a) => {
            let n = match &a.len {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) => i.base10_digits().to_string(),
                _ => "N".into(),
            };
            (format!("[{n}]"), vec![(*a.elem).clone()])
        }
        _ => panic!("a config field of a type config::manpage cannot name"),
    }
}

/// How the page names a value of this type.
fn type_name(items: &BTreeMap<String, Item>, ty: &syn::Type) -> String {
    let (name, args) = outer(ty);
    let arg = |i: usize| type_name(items, &args[i]);
    match name.as_str() {
        "Option" => arg(0),
        "String" => "string".into(),
        "PathBuf" => "path".into(),
        "bool" => "boolean".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer".into(),
        "f32" | "f64" => "number".into(),
        "HumanDuration" => "duration".into(),
        "Secret" => "string (a secret)".into(),
        "Expiry" => "RFC 3339 date-time".into(),
        "Vec" => format!("array of {}", plural(&arg(0))),
        "BTreeMap" | "HashMap" => format!("table of {}", plural(&arg(1))),
        n if n.starts_with('[') => format!("array of {} {}", &n[1..n.len() - 1], plural(&arg(0))),
        n => match items.get(n) {
            Some(Item::Enum {
                tag: None,
                variants,
            }) => {
                let names: Vec<String> = variants.iter().map(|v| format!("\"{}\"", v.0)).collect();
                format!("one of {}", names.join(", "))
            }
            Some(_) => "table".into(),
            None => panic!("config::manpage cannot name the type {n}: teach type_name"),
        },
    }
}

fn plural(t: &str) -> String {
    if t.starts_with("one of ") {
        format!("strings, each {t}")
    } else if t.contains(' ') || t.ends_with('s') {
        format!("values of type {t}")
    } else {
        format!("{t}s")
    }
}

/// A value the parser accepts for a required field (to learn the other fields' defaults).
fn sample(items: &BTreeMap<String, Item>, ty: &syn::Type) -> String {
    let (name, _) = outer(ty);
    match name.as_str() {
        "String" | "Secret" => "\"x\"".into(),
        "PathBuf" => "\"/x\"".into(),
        "bool" => "true".into(),
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "1".into(),
        "f32" | "f64" => "1.0".into(),
        "HumanDuration" => "\"1s\"".into(),
        "Vec" => "[]".into(),
        "BTreeMap" | "HashMap" => "{}".into(),
        n => match items.get(n) {
            Some(Item::Enum {
                tag: None,
                variants,
            }) => format!("\"{}\"", variants[0].0),
            _ => panic!("config::manpage has no sample value of {n}: teach sample"),
        },
    }
}

/// A default as TOML shows it.
fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "unset".into(),
        Some(v) => toml::Value::try_from(v)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| v.to_string()),
    }
}

fn key(path: &str, f: &Field, ty: String, default: String) -> Key {
    Key {
        name: f.name.clone(),
        ty,
        default,
        reload: reload_of(path),
        doc: f.doc.clone(),
    }
}

/// The struct `name` at dotted `path` (its defaults in `defaults`): its keys, then its
/// subsections and arrays of tables.
fn walk(
    items: &BTreeMap<String, Item>,
    name: &str,
    path: &str,
    doc: String,
    defaults: &Value,
    out: &mut Vec<Section>,
) {
    let Some(Item::Struct { doc: own, fields }) = items.get(name) else {
        panic!("{path}: no struct {name} in src/config/");
    };
    let at = out.len();
    out.push(Section {
        header: format!("[{path}]"),
        doc: if doc.is_empty() { own.clone() } else { doc },
        keys: Vec::new(),
    });
    for f in fields {
        let p = format!("{path}.{}", f.name);
        let (outer_name, args) = outer(&f.ty);
        let inner = match outer_name.as_str() {
            "Option" => outer(&args[0]).0,
            _ => outer_name.clone(),
        };
        let value = defaults.get(&f.name);
        if let Some(Item::Struct { .. }) = items.get(&inner) {
            walk(
                items,
                &inner,
                &p,
                f.doc.clone(),
                value.unwrap_or(&Value::Null),
                out,
            );
            continue;
        }
        let elem = (outer_name == "Vec").then(|| outer(&args[0]).0);
        match elem.as_deref().and_then(|e| items.get(e).map(|i| (e, i))) {
            Some((e, Item::Struct { .. })) => {
                let k = key(&p, f, format!("array of tables, [[{p}]]"), show(value));
                out[at].keys.push(k);
                array(items, &p, f, e, None, out);
            }
            Some((
                e,
                Item::Enum {
                    tag: Some(tag),
                    variants,
                },
            )) => {
                let k = key(&p, f, format!("array of tables, [[{p}]]"), show(value));
                out[at].keys.push(k);
                for v in variants {
                    array(items, &p, f, e, Some((tag, v)), out);
                }
            }
            _ => {
                let k = key(&p, f, type_name(items, &f.ty), show(value));
                out[at].keys.push(k);
            }
        }
    }
}

type Variant = (String, String, Vec<Field>);

/// An array of tables at `path` whose elements are the struct `elem`, or one variant of the
/// tagged enum `elem`. Defaults come from parsing an element with only its required fields.
fn array(
    items: &BTreeMap<String, Item>,
    path: &str,
    field: &Field,
    elem: &str,
    variant: Option<(&String, &Variant)>,
    out: &mut Vec<Section>,
) {
    let (fields, doc, mut toml) = match (variant, items.get(elem)) {
        (Some((tag, (name, doc, fields))), _) => (
            fields,
            format!(
                "{tag} = \"{name}\": {}",
                if doc.is_empty() { &field.doc } else { doc }
            ),
            format!("[[{path}]]\n{tag} = \"{name}\"\n"),
        ),
        (None, Some(Item::Struct { doc, fields })) => {
            (fields, doc.clone(), format!("[[{path}]]\n"))
        }
        _ => panic!("{path}: no element type {elem}"),
    };
    for f in fields.iter().filter(|f| !f.optional) {
        let _ = writeln!(toml, "{} = {}", f.name, sample(items, &f.ty));
    }
    let parsed = super::parse(&toml, Path::new("sample"))
        .unwrap_or_else(|e| panic!("a sample [[{path}]] does not parse: {e}\n{toml}"));
    let value = serde_json::to_value(parsed).expect("a config serialises");
    let element = value
        .pointer(&format!("/{}/0", path.replace('.', "/")))
        .cloned()
        .unwrap_or(Value::Null);
    let mut section = Section {
        header: format!("[[{path}]]"),
        doc: if doc.is_empty() {
            field.doc.clone()
        } else {
            doc
        },
        keys: Vec::new(),
    };
    if let Some((tag, (name, _, _))) = variant {
        section.keys.push(Key {
            name: tag.clone(),
            ty: "string".into(),
            default: "required".into(),
            reload: reload_of(path),
            doc: format!("\"{name}\" for this kind of element."),
        });
    }
    for f in fields {
        let p = format!("{path}.{}", f.name);
        let default = if f.optional {
            show(element.get(&f.name))
        } else {
            "required".into()
        };
        section
            .keys
            .push(key(&p, f, type_name(items, &f.ty), default));
    }
    out.push(section);
}

/// The sections of `Config`, in the order of its fields.
fn sections() -> Vec<Section> {
    let items = items();
    let defaults = serde_json::to_value(Config::default()).expect("a config serialises");
    let Some(Item::Struct { fields, .. }) = items.get("Config") else {
        panic!("no struct Config in src/config/");
    };
    let mut out = Vec::new();
    for f in fields {
        let ty = outer(&f.ty).0;
        let value = defaults.get(&f.name).unwrap_or(&Value::Null);
        walk(&items, &ty, &f.name, f.doc.clone(), value, &mut out);
    }
    let undocumented: Vec<String> = out
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| (s, k)))
        .filter(|(_, k)| k.doc.is_empty())
        .map(|(s, k)| format!("{} {}", s.header, k.name))
        .chain(
            out.iter()
                .filter(|s| s.doc.is_empty() && !s.keys.is_empty())
                .map(|s| s.header.clone()),
        )
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys without a doc comment in src/config/ (llamactl.toml(5) is made from them): {}",
        undocumented.join(", ")
    );
    out
}

mod roff;
