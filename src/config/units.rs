//! Parsing of durations and byte sizes, with messages that say what is expected, and the range
//! each key accepts ([`duration_within`], [`size_within`]): a value too large to represent is an
//! error like any value out of range, never a saturated maximum.

use super::file::SizeValue;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A duration or size that parsed, or `None` when it is too large to represent.
type Parsed<T> = Result<Option<T>, String>;

fn duration_value(text: &str) -> Parsed<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) => Ok(Some(d)),
        Err(humantime::DurationError::NumberOverflow) => Ok(None),
        Err(e) => Err(format!(
            "invalid duration {text:?} ({e}); expected a number with a unit, e.g. \"30s\", \"5m\", \"1h\""
        )),
    }
}

fn size_value(value: &SizeValue) -> Parsed<u64> {
    match value {
        SizeValue::Bytes(n) => u64::try_from(*n)
            .map(Some)
            .map_err(|_| format!("invalid size {n}: must not be negative")),
        SizeValue::Text(text) => match text.trim().parse::<bytesize::ByteSize>() {
            // bytesize computes in f64 and saturates: u64::MAX only comes of a value at or past
            // 2^64 (the largest f64 below 2^64 is 2^64 - 2048)
            Ok(b) if b.as_u64() == u64::MAX => Ok(None),
            Ok(b) => Ok(Some(b.as_u64())),
            Err(_) => Err(format!(
                "invalid size {text:?}; expected bytes or a unit, e.g. \"64KiB\", \"256MiB\", \"1GB\""
            )),
        },
    }
}

/// Parse a duration such as "500ms", "30s", "5m", "1h", "7d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration_value(text)?.ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Parse a size: bytes as an integer, or a string such as "64KiB", "256MiB", "1GB".
pub fn parse_size(value: &SizeValue) -> Result<u64, String> {
    size_value(value)?.ok_or_else(|| format!("size {} is too large", shown(value)))
}

/// Parse the duration `text`, which must lie in `range`.
pub(super) fn duration_within(
    text: &str,
    range: &RangeInclusive<Duration>,
) -> Result<Duration, String> {
    match duration_value(text)? {
        Some(d) if range.contains(&d) => Ok(d),
        _ => Err(out_of_range(
            &format!("{text:?}"),
            range,
            Duration::ZERO,
            show_duration,
        )),
    }
}

/// Parse the size `value`, which must lie in `range`.
pub(super) fn size_within(value: &SizeValue, range: &RangeInclusive<u64>) -> Result<u64, String> {
    match size_value(value)? {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(out_of_range(&shown(value), range, 0, show_size)),
    }
}

/// A size as written in the file.
fn shown(value: &SizeValue) -> String {
    match value {
        SizeValue::Bytes(n) => n.to_string(),
        SizeValue::Text(text) => format!("{text:?}"),
    }
}

/// `value is out of range: use at least <min> and at most <max>` (no lower bound when it is
/// `zero`).
fn out_of_range<T: PartialEq>(
    value: &str,
    range: &RangeInclusive<T>,
    zero: T,
    show: fn(&T) -> String,
) -> String {
    let at_least = if *range.start() == zero {
        String::new()
    } else {
        format!("at least {} and ", show(range.start()))
    };
    format!(
        "{value} is out of range: use {at_least}at most {}",
        show(range.end())
    )
}

/// A duration in the largest unit that says it exactly ("90s", "10m", "1d", "500ms").
fn show_duration(d: &Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_secs();
    match [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| secs > 0 && secs.is_multiple_of(*unit))
    {
        Some((unit, name)) => format!("{}{name}", secs / unit),
        None => format!("{secs}s"),
    }
}

/// A size in the largest binary unit that says it exactly ("1MiB", "1024PiB", "100 bytes").
fn show_size(n: &u64) -> String {
    let units = [
        (50, "PiB"),
        (40, "TiB"),
        (30, "GiB"),
        (20, "MiB"),
        (10, "KiB"),
    ];
    match units
        .into_iter()
        .find(|(shift, _)| *n > 0 && n.is_multiple_of(1u64 << shift))
    {
        Some((shift, name)) => format!("{}{name}", n >> shift),
        None if *n == 1 => "1 byte".into(),
        None => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SizeValue {
        SizeValue::Text(s.into())
    }

    #[test]
    fn durations_with_units_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn sizes_parse_as_bytes_or_units() {
        assert_eq!(parse_size(&SizeValue::Bytes(10)).unwrap(), 10);
        assert_eq!(parse_size(&text("1KiB")).unwrap(), 1024);
        assert_eq!(parse_size(&text("2MiB")).unwrap(), 2 << 20);
        assert_eq!(parse_size(&text("16383PiB")).unwrap(), 16383 << 50);
        assert!(parse_size(&text("lots")).is_err());
        assert!(parse_size(&SizeValue::Bytes(-1)).is_err());
    }

    #[test]
    fn values_too_large_to_represent_are_errors_not_maxima() {
        for big in [
            "99999999999999999999PiB",
            "16384PiB",
            "18446744073709551616",
        ] {
            let e = parse_size(&text(big)).unwrap_err();
            assert!(e.contains(big), "{e}");
        }
        for big in ["99999999999999999999s", "600000000000000000000000000h"] {
            let e = parse_duration(big).unwrap_err();
            assert!(e.contains("too large"), "{e}");
        }
    }

    #[test]
    fn values_outside_the_range_name_it() {
        let day = Duration::from_secs(86_400);
        let within = Duration::from_millis(1)..=day;
        assert_eq!(
            duration_within("1h", &within),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(duration_within("1d", &within), Ok(day));
        for bad in ["0s", "1000000000h", "99999999999999999999s", "25h"] {
            assert_eq!(
                duration_within(bad, &within),
                Err(format!(
                    "{bad:?} is out of range: use at least 1ms and at most 1d"
                ))
            );
        }
        assert!(duration_within("soon", &within)
            .unwrap_err()
            .contains("invalid duration"));
        let sizes = 1 << 20..=1 << 50;
        assert_eq!(size_within(&text("256MiB"), &sizes), Ok(256 << 20));
        for bad in ["99999999999999999999PiB", "1023KiB", "2PiB"] {
            assert_eq!(
                size_within(&text(bad), &sizes),
                Err(format!(
                    "{bad:?} is out of range: use at least 1MiB and at most 1PiB"
                ))
            );
        }
        assert_eq!(
            size_within(&SizeValue::Bytes(5), &(0..=4)),
            Err("5 is out of range: use at most 4 bytes".into())
        );
    }

    #[test]
    fn bounds_are_shown_in_their_largest_exact_unit() {
        let d = |s| show_duration(&Duration::from_secs(s));
        assert_eq!(
            [d(0), d(59), d(90), d(600), d(7200), d(3650 * 86_400)],
            ["0s", "59s", "90s", "10m", "2h", "3650d"]
        );
        assert_eq!(show_duration(&Duration::from_millis(1)), "1ms");
        assert_eq!(show_duration(&Duration::from_nanos(5)), "5ns");
        assert_eq!(
            [1, 100, 1 << 10, 1 << 20, 1 << 60, u64::from(u32::MAX)].map(|n| show_size(&n)),
            [
                "1 byte",
                "100 bytes",
                "1KiB",
                "1MiB",
                "1024PiB",
                "4294967295 bytes"
            ]
        );
    }
}
