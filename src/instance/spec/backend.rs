//! `backend_options`, typed: the options llamactl itself reads (model, port, host, alias,
//! api_key, metrics, command, health_path, metrics_path, extra_args) as checked values, and every
//! other option as a pass-through flag kept as data (`ctx_size: 2048` → `--ctx-size 2048`).
//! On the wire and on disk it is upstream's flat object; each value is checked as it is read, and
//! an error names the option (`backend_options.port: …`).

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use std::fmt;

/// One item of a list flag (`lora: ["/a", "/b"]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(Number),
}

impl Scalar {
    /// As a command-line argument.
    pub fn arg(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Num(n) => n.to_string(),
        }
    }
    fn to_value(&self) -> Value {
        match self {
            Scalar::Str(s) => Value::String(s.clone()),
            Scalar::Num(n) => Value::Number(n.clone()),
        }
    }
}

/// A pass-through option: `true` is a bare flag, `false`/`null` no flag, a list repeats it.
#[derive(Clone, Debug, PartialEq)]
pub enum Flag {
    Null,
    Bool(bool),
    One(Scalar),
    List(Vec<Scalar>),
}

impl Flag {
    pub fn to_value(&self) -> Value {
        match self {
            Flag::Null => Value::Null,
            Flag::Bool(b) => Value::Bool(*b),
            Flag::One(s) => s.to_value(),
            Flag::List(l) => Value::Array(l.iter().map(Scalar::to_value).collect()),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Flag::One(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }
}

fn text<E: de::Error>(s: String) -> Result<String, E> {
    if s.contains('\0') {
        Err(E::custom("contains a NUL byte"))
    } else {
        Ok(s)
    }
}

fn scalar<E: de::Error>(v: Value) -> Result<Scalar, E> {
    match v {
        Value::String(s) => Ok(Scalar::Str(text(s)?)),
        Value::Number(n) => Ok(Scalar::Num(n)),
        other => Err(E::custom(format!("{other} is not a string or number"))),
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Flag::Null),
            Value::Bool(b) => Ok(Flag::Bool(b)),
            Value::Array(items) => {
                Ok(Flag::List(items.into_iter().map(scalar).collect::<Result<
                    _,
                    D::Error,
                >>(
                )?))
            }
            Value::Object(_) => Err(de::Error::custom(
                "must be a string, number, boolean or list",
            )),
            v => Ok(Flag::One(scalar(v)?)),
        }
    }
}

/// A string without NUL bytes.
struct Text(String);
impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(String::deserialize(d)?).map(Text)
    }
}

/// A URL path (`/health`).
struct UrlPath(String);
impl<'de> Deserialize<'de> for UrlPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Text::deserialize(d)?.0;
        if s.starts_with('/') && !s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            Ok(UrlPath(s))
        } else {
            Err(de::Error::custom(format!(
                "{s:?} must be a path starting with /"
            )))
        }
    }
}

/// The address the backend listens on: an IP address or `localhost`.
struct Host(String);
impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Text::deserialize(d)?.0;
        if s == "localhost" || s.parse::<std::net::IpAddr>().is_ok() {
            Ok(Host(s))
        } else {
            Err(de::Error::custom(format!("{s:?} is not an IP address")))
        }
    }
}

/// A port; `0` or `null` means "assign one".
struct Port(Option<u16>);
impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Port(None)),
            Value::Number(n) => match n.as_u64().map(u16::try_from) {
                Some(Ok(0)) => Ok(Port(None)),
                Some(Ok(p)) => Ok(Port(Some(p))),
                _ => Err(de::Error::custom(format!("{n} is not a port (1-65535)"))),
            },
            other => Err(de::Error::custom(format!(
                "{other} is not a port (1-65535)"
            ))),
        }
    }
}

/// An argument list (`extra_args`, `command`): strings, numbers taken as their text.
struct Args(Vec<String>);
impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<Value>::deserialize(d)?;
        items
            .into_iter()
            .map(|v| scalar(v).map(|s| s.arg()))
            .collect::<Result<_, D::Error>>()
            .map(Args)
    }
}

/// The backend's options. See the module comment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendOptions {
    /// GGUF path (llama.cpp) or model name/path (vLLM).
    pub model: Option<String>,
    pub port: Option<u16>,
    pub host: Option<String>,
    /// llama-server's `--alias`: names the proxy routes here (comma-separated).
    pub alias: Option<String>,
    /// The key the backend requires (`--api-key`), which the proxy sends it.
    pub api_key: Option<String>,
    /// llama-server's own `/metrics` (on unless `false`).
    pub metrics: Option<bool>,
    /// The command backend's argv (`{port}`, `{host}` substituted).
    pub command: Option<Vec<String>>,
    pub health_path: Option<String>,
    pub metrics_path: Option<String>,
    /// Arguments appended verbatim.
    pub extra_args: Option<Vec<String>>,
    /// Every other option, passed to the backend as a flag.
    pub flags: BTreeMap<String, Flag>,
}

/// An option name fit to become `--name`.
pub fn flag_key_ok(k: &str) -> bool {
    k.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
        && k.len() <= 128
        && k.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

impl BackendOptions {
    /// The flat object upstream uses (and the command line is built from).
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m: Map<String, Value> = self
            .flags
            .iter()
            .map(|(k, v)| (k.clone(), v.to_value()))
            .collect();
        let s = |v: &Option<String>| v.clone().map(Value::String);
        let list = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|l| Value::Array(l.iter().cloned().map(Value::String).collect()))
        };
        for (k, v) in [
            ("model", s(&self.model)),
            ("port", self.port.map(Value::from)),
            ("host", s(&self.host)),
            ("alias", s(&self.alias)),
            ("api_key", s(&self.api_key)),
            ("metrics", self.metrics.map(Value::Bool)),
            ("command", list(&self.command)),
            ("health_path", s(&self.health_path)),
            ("metrics_path", s(&self.metrics_path)),
            ("extra_args", list(&self.extra_args)),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        m
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.to_map().is_empty()
    }
}

impl Serialize for BackendOptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.to_map();
        let mut out = s.serialize_map(Some(m.len()))?;
        for (k, v) in &m {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

impl<'de> Deserialize<'de> for BackendOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BackendOptions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of backend options")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut o = BackendOptions::default();
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!("option {k:?} given twice")));
                    }
                    match k.as_str() {
                        "model" => o.model = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "port" => o.port = map.next_value::<Port>()?.0,
                        "host" => o.host = map.next_value::<Option<Host>>()?.map(|h| h.0),
                        "alias" => o.alias = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "api_key" => o.api_key = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "metrics" => o.metrics = map.next_value()?,
                        "command" => o.command = map.next_value::<Option<Args>>()?.map(|a| a.0),
                        "health_path" => {
                            o.health_path = map.next_value::<Option<UrlPath>>()?.map(|p| p.0)
                        }
                        "metrics_path" => {
                            o.metrics_path = map.next_value::<Option<UrlPath>>()?.map(|p| p.0)
                        }
                        "extra_args" => {
                            o.extra_args = map.next_value::<Option<Args>>()?.map(|a| a.0)
                        }
                        _ if !flag_key_ok(&k) => {
                            return Err(de::Error::custom(format!(
                                "invalid option name {k:?} (lower-case letters, digits, _ and -)"
                            )))
                        }
                        _ => {
                            let v = map.next_value::<Flag>()?;
                            o.flags.insert(k, v);
                        }
                    }
                }
                Ok(o)
            }
        }
        d.deserialize_map(V)
    }
}
