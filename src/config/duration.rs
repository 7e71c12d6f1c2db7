//! Durations written the way operators write them in unit files: `500ms`, `30s`, `5m`, `1h`.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A `std::time::Duration` that reads from TOML as `"30s"` (or a bare integer of seconds), so the
/// config never needs a unit-suffixed key name like `timeout_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The longest duration accepted, however written: a year. A deadline that far ahead still fits
/// an `Instant` (`Instant::now() + d` panics past that range).
const MAX_SECS: u64 = 365 * 86_400;

fn out_of_range(text: impl fmt::Debug) -> String {
    format!("invalid duration {text:?}: out of range (up to a year)")
}

/// Parses `<number><unit>` with unit one of `ms`, `s`, `m`, `h`, `d` (a bare number means
/// seconds), up to a year.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: expected e.g. \"500ms\", \"30s\", \"5m\""
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: {num:?} is not a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > MAX_SECS as f64 {
        return Err(out_of_range(text));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                if v > MAX_SECS {
                    return Err(E::custom(out_of_range(v)));
                }
                Ok(HumanDuration::secs(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("99999999h").is_err());
    }

    /// A whole number of seconds is held to the same year as text: `start_timeout =
    /// 9223372036854775807` passed and made `Instant::now() + timeout` panic on the first
    /// proxied request that waited for a start (fuzz/artifacts/config/).
    #[test]
    fn integer_seconds_are_bounded_too() {
        #[derive(Debug, Deserialize)]
        struct T {
            d: HumanDuration,
        }
        let de = |text: &str| toml::from_str::<T>(text).map_err(|e| e.to_string());
        assert_eq!(
            de("d = 31536000").unwrap().d,
            HumanDuration::secs(31_536_000)
        );
        for big in ["d = 31536001", "d = 9223372036854775807"] {
            let e = de(big).unwrap_err();
            assert!(e.contains("out of range (up to a year)"), "{e}");
        }
        assert!(de("d = -1").unwrap_err().contains("cannot be negative"));
    }

    #[test]
    fn displays_round_trip() {
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        assert_eq!(HumanDuration::secs(30).to_string(), "30s");
    }
}
