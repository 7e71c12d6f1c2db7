//! The spec's typed values, each checked when it is read (from a request, the CLI or a spec
//! file) with a message naming what it must be, and bounded so that nothing computed from it can
//! overflow: sizes, CPU quotas, GPU ids, seconds, minutes, restart counts.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A number as JSON or TOML gives it.
fn as_f64<E: de::Error>(v: &serde_json::Number) -> Result<f64, E> {
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
}

/// A memory size (`MemoryMax=`): bytes, or `"8G"`, `"512M"` (1024-based `K`, `M`, `G`, `T`).
/// Kept as written, so a spec reads back as its author wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteSize {
    bytes: u64,
    written: serde_json::Value,
}

/// The largest size accepted: 1 PiB.
const MAX_BYTES: u64 = 1 << 50;

impl ByteSize {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn parse(v: &serde_json::Value) -> Result<Self, String> {
        let bytes = match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| format!("{n} is not a byte count"))?,
            serde_json::Value::String(s) => {
                let t = s.trim();
                let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
                    Some('K') => (&t[..t.len() - 1], 1u64 << 10),
                    Some('M') => (&t[..t.len() - 1], 1 << 20),
                    Some('G') => (&t[..t.len() - 1], 1 << 30),
                    Some('T') => (&t[..t.len() - 1], 1 << 40),
                    _ => (t, 1),
                };
                let n: f64 = num
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?} is not a size such as \"8G\""))?;
                if !n.is_finite() || n <= 0.0 || n * mult as f64 > MAX_BYTES as f64 {
                    return Err(format!("{s:?} is out of range (up to 1P)"));
                }
                (n * mult as f64) as u64
            }
            other => return Err(format!("{other} is not a size such as \"8G\"")),
        };
        if bytes == 0 || bytes > MAX_BYTES {
            return Err(format!("{v} is out of range (1 byte to 1P)"));
        }
        Ok(Self {
            bytes,
            written: v.clone(),
        })
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    /// From the command line: `8G`, or a byte count.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u64>() {
            Ok(n) => ByteSize::parse(&serde_json::Value::from(n)),
            Err(_) => ByteSize::parse(&serde_json::Value::from(s)),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        ByteSize::parse(&v).map_err(de::Error::custom)
    }
}

/// A CPU limit in percent of one CPU (`150` = one and a half cores), more than 0 and at most
/// 100000 (a thousand cores).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuQuota(f64);

/// A bounded non-negative number, written whole when it is (so `150` reads back as `150`).
fn serialize_number<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 {
        s.serialize_u64(v as u64)
    } else {
        s.serialize_f64(v)
    }
}

impl Serialize for CpuQuota {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_number(self.0, s)
    }
}

impl CpuQuota {
    pub fn percent(self) -> f64 {
        self.0
    }

    /// `CPUQuotaPerSecUSec=`: microseconds of CPU time per second.
    pub fn per_sec_usec(self) -> u64 {
        (self.0 * 10_000.0) as u64
    }
}

impl<'de> Deserialize<'de> for CpuQuota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let q = as_f64(&n)?;
        if q > 0.0 && q <= 100_000.0 {
            Ok(CpuQuota(q))
        } else {
            Err(de::Error::custom(format!(
                "{q} must be a percentage of one CPU above 0 and up to 100000 (100 = one CPU)"
            )))
        }
    }
}

/// A GPU: an index, or a UUID (`GPU-…`), as `CUDA_VISIBLE_DEVICES` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuId {
    Index(u32),
    Uuid(String),
}

impl fmt::Display for GpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuId::Index(i) => write!(f, "{i}"),
            GpuId::Uuid(u) => f.write_str(u),
        }
    }
}

impl Serialize for GpuId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuId::Index(i) => s.serialize_u32(*i),
            GpuId::Uuid(u) => s.serialize_str(u),
        }
    }
}

impl<'de> Deserialize<'de> for GpuId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|i| *i < 1024)
                .map(GpuId::Index)
                .ok_or_else(|| de::Error::custom(format!("{n} is not a GPU index (0-1023)"))),
            serde_json::Value::String(s)
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                Ok(GpuId::Uuid(s))
            }
            other => Err(de::Error::custom(format!(
                "{other} is not a GPU index or UUID"
            ))),
        }
    }
}

/// Defines a bounded whole number of some unit, read from any JSON/TOML integer in range.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $max:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(u32);

        impl $name {
            pub const MAX: u32 = $max;

            pub fn new(v: u32) -> Option<Self> {
                (v <= Self::MAX).then_some(Self(v))
            }

            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} from 0 to {}", $what, $max)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        u32::try_from(v)
                            .ok()
                            .and_then($name::new)
                            .ok_or_else(|| E::custom(format!("{v} is not {} from 0 to {}", $what, $max)))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        u32::try_from(v)
                            .ok()
                            .and_then($name::new)
                            .ok_or_else(|| E::custom(format!("{v} is not {} from 0 to {}", $what, $max)))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

bounded!(
    /// Restarts after failures before giving up: at most 10000.
    Restarts,
    10_000,
    "a number of restarts"
);

bounded!(
    /// Seconds between automatic restarts: at most a day.
    DelaySeconds,
    86_400,
    "a number of seconds"
);

/// Minutes without a request before an idle instance is stopped; fractions allowed, at most a
/// year; 0 = never. A whole value is written back as an integer (upstream takes whole minutes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Minutes(f64);

impl Minutes {
    pub const MAX: f64 = 525_600.0;
    pub const ZERO: Minutes = Minutes(0.0);

    pub fn get(self) -> f64 {
        self.0
    }

    /// The duration, when not 0.
    pub fn duration(self) -> Option<Duration> {
        (self.0 > 0.0).then(|| Duration::from_secs_f64(self.0 * 60.0))
    }
}

impl Serialize for Minutes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_number(self.0, s)
    }
}

impl<'de> Deserialize<'de> for Minutes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        let m = as_f64(&n)?;
        if (0.0..=Minutes::MAX).contains(&m) {
            Ok(Minutes(m))
        } else {
            Err(de::Error::custom(format!(
                "{m} must be a number of minutes from 0 to {} (a year)",
                Minutes::MAX
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn de<T: for<'a> Deserialize<'a>>(v: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse(&json!("8G")).unwrap().bytes(), 8 << 30);
        assert_eq!(ByteSize::parse(&json!("512m")).unwrap().bytes(), 512 << 20);
        assert_eq!(ByteSize::parse(&json!(1000)).unwrap().bytes(), 1000);
        for bad in [
            json!("-1G"),
            json!("lots"),
            json!(0),
            json!("1e300T"),
            json!(true),
            json!("nan"),
        ] {
            assert!(ByteSize::parse(&bad).is_err(), "{bad}");
        }
        // Written back as written.
        let b: ByteSize = de(json!("8G")).unwrap();
        assert_eq!(serde_json::to_value(&b).unwrap(), json!("8G"));
    }

    #[test]
    fn bounded_numbers_refuse_what_would_overflow() {
        assert_eq!(de::<DelaySeconds>(json!(5)).unwrap().get(), 5);
        for bad in [
            json!(9223372036854775807u64),
            json!(-1),
            json!(86_401),
            json!(1.5),
            json!("5"),
        ] {
            let e = de::<DelaySeconds>(bad.clone()).unwrap_err();
            assert!(e.contains("seconds from 0 to 86400"), "{bad}: {e}");
        }
        assert!(de::<Restarts>(json!(10_001)).is_err());
        assert_eq!(
            de::<Minutes>(json!(0.5)).unwrap().duration(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(Minutes::ZERO.duration(), None);
        for bad in [json!(1e20), json!(-1), json!("x")] {
            assert!(de::<Minutes>(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_value(de::<Minutes>(json!(5.0)).unwrap()).unwrap(),
            json!(5)
        );
        assert!(de::<CpuQuota>(json!(0)).is_err() && de::<CpuQuota>(json!(1e9)).is_err());
        assert_eq!(
            de::<CpuQuota>(json!(150)).unwrap().per_sec_usec(),
            1_500_000
        );
    }

    #[test]
    fn gpus() {
        assert_eq!(de::<GpuId>(json!(1)).unwrap(), GpuId::Index(1));
        assert_eq!(
            de::<GpuId>(json!("GPU-0c1b")).unwrap().to_string(),
            "GPU-0c1b"
        );
        for bad in [json!(-1), json!(""), json!("a,b"), json!(5000), json!(null)] {
            assert!(de::<GpuId>(bad.clone()).is_err(), "{bad}");
        }
    }
}
