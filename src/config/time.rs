//! RFC 3339 timestamps ↔ Unix seconds, without a date-time crate: key expiry dates in the
//! config and the CLI, and times shown to operators. Civil-date arithmetic after Howard
//! Hinnant's `days_from_civil`; every input is range-checked, so no text can overflow.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn num(s: &str, what: &str) -> Result<i64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    s.parse()
        .map_err(|_| format!("{what} {s:?} is out of range"))
}

/// Parses `2027-01-31T12:00:00Z`, `2027-01-31T12:00:00.5+02:00` or a bare date `2027-01-31`
/// (midnight UTC) into Unix seconds (fractions dropped).
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad =
        |why: String| format!("invalid date {text:?}: {why} (expected e.g. 2027-01-31T12:00:00Z)");
    let t = text.trim();
    if !t.is_ascii() {
        return Err(bad("not ASCII".into()));
    }
    let (date, rest) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut parts = date.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("no year-month-day".into()));
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad("the date must be YYYY-MM-DD".into()));
    }
    let (y, m, d) = (
        num(y, "year").map_err(bad)?,
        num(m, "month").map_err(bad)?,
        num(d, "day").map_err(bad)?,
    );
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(bad("no such day".into()));
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    let Some(rest) = rest else {
        return Ok(secs);
    };
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => {
            return Err(bad(
                "no time zone (add Z or an offset such as +02:00)".into()
            ))
        }
    };
    let clock = clock.split('.').next().unwrap_or("");
    let hms: Vec<&str> = clock.split(':').collect();
    if hms.len() != 3 || hms.iter().any(|p| p.len() != 2) {
        return Err(bad("the time must be HH:MM:SS".into()));
    }
    let (h, mi, s) = (
        num(hms[0], "hour").map_err(bad)?,
        num(hms[1], "minute").map_err(bad)?,
        num(hms[2], "second").map_err(bad)?,
    );
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad("no such time".into()));
    }
    secs += h * 3600 + mi * 60 + s;
    if offset.eq_ignore_ascii_case("z") {
        return Ok(secs);
    }
    let sign = if offset.starts_with('-') { 1 } else { -1 };
    let o = &offset[1..];
    let (oh, om) = o
        .split_once(':')
        .ok_or_else(|| bad("the offset must be ±HH:MM".into()))?;
    if oh.len() != 2 || om.len() != 2 {
        return Err(bad("the offset must be ±HH:MM".into()));
    }
    let (oh, om) = (
        num(oh, "offset").map_err(bad)?,
        num(om, "offset").map_err(bad)?,
    );
    if oh > 23 || om > 59 {
        return Err(bad("no such offset".into()));
    }
    Ok(secs + sign * (oh * 3600 + om * 60))
}

/// Unix seconds as `2027-01-31T12:00:00Z`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix microseconds as `2027-01-31T12:00:00.123456Z` (audit records).
pub fn format_rfc3339_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let base = format_rfc3339(secs);
    format!("{}.{frac:06}Z", &base[..base.len() - 1])
}

/// Parses an RFC 3339 time keeping its microseconds (up to six fraction digits).
pub fn parse_rfc3339_micros(text: &str) -> Result<i64, String> {
    let secs = parse_rfc3339(text)?;
    let t = text.trim();
    let frac = t
        .find('.')
        .map(|i| {
            let digits: String = t[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .take(6)
                .collect();
            format!("{digits:0<6}").parse::<i64>().unwrap_or(0)
        })
        .unwrap_or(0);
    secs.checked_mul(1_000_000)
        .and_then(|s| s.checked_add(frac))
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2027-01-31"), Ok(1_801_353_600));
        assert_eq!(format_rfc3339(1_801_353_600), "2027-01-31T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-02-29T12:30:05.25Z"), Ok(1_709_209_805));
        assert_eq!(
            parse_rfc3339("2024-02-29T14:30:05+02:00"),
            parse_rfc3339("2024-02-29T12:30:05Z")
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T10:30:05-02:00"),
            parse_rfc3339("2024-02-29T12:30:05Z")
        );
        for s in [0, 1, 86_399, 951_782_400, 4_102_444_800, -86_401] {
            assert_eq!(parse_rfc3339(&format_rfc3339(s)), Ok(s), "{s}");
        }
    }

    #[test]
    fn microseconds() {
        assert_eq!(
            format_rfc3339_micros(1_709_209_805_250_001),
            "2024-02-29T12:30:05.250001Z"
        );
        assert_eq!(format_rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            parse_rfc3339_micros("2024-02-29T12:30:05.250001Z"),
            Ok(1_709_209_805_250_001)
        );
        assert_eq!(
            parse_rfc3339_micros("2024-02-29T12:30:05.25Z"),
            Ok(1_709_209_805_250_000)
        );
        assert_eq!(
            parse_rfc3339_micros("2024-02-29"),
            Ok(1_709_164_800_000_000)
        );
    }

    #[test]
    fn rejects_what_is_not_a_date() {
        for bad in [
            "",
            "2023-02-29",
            "2027-13-01",
            "2027-1-01",
            "2027-01-01T25:00:00Z",
            "2027-01-01T10:00:00",
            "2027-01-01T10:00Z",
            "2027-01-01T10:00:00+0200",
            "99999999999999999999-01-01",
            "2027-01-01T10:00:00+99:00",
            "２０２７-01-01",
            "+027-01-01",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Arbitrary text and numbers: an answer, never a panic or an overflow.
    #[test]
    fn arbitrary_input_never_panics() {
        const PIECES: &[&str] = &[
            "2027", "-", "01", "31", "T", "t", " ", ":", "00", "59", "60", "Z", "+", "02:00", ".",
            "5", "99", "é", "0000", "9999", "24", "",
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 9) as usize;
            let text: String = (0..n)
                .map(|i| PIECES[((x >> (i * 5)) % PIECES.len() as u64) as usize])
                .collect();
            match parse_rfc3339(&text) {
                // Years 1970-9999 print back as they parse.
                Ok(secs) if (0..253_402_300_800).contains(&secs) => {
                    assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Ok(secs), "{text:?}");
                }
                _ => {}
            }
        }
        for secs in [i64::MIN, i64::MIN + 1, -1, i64::MAX - 1, i64::MAX] {
            let _ = format_rfc3339(secs);
        }
    }
}
