//! Parsing of durations and byte sizes, with messages that say what is expected.

use super::file::SizeValue;
use std::time::Duration;

/// Parse a duration such as "500ms", "30s", "5m", "1h", "7d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); expected a number with a unit, e.g. \"30s\", \"5m\", \"1h\"")
    })
}

/// Parse a size: bytes as an integer, or a string such as "64KiB", "256MiB", "1GB".
pub fn parse_size(value: &SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Bytes(n) if *n >= 0 => Ok(*n as u64),
        SizeValue::Bytes(n) => Err(format!("invalid size {n}: must not be negative")),
        SizeValue::Text(text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                format!("invalid size {text:?}; expected bytes or a unit, e.g. \"64KiB\", \"256MiB\", \"1GB\"")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_size(&SizeValue::Text("1KiB".into())).unwrap(), 1024);
        assert_eq!(
            parse_size(&SizeValue::Text("2MiB".into())).unwrap(),
            2 << 20
        );
        assert!(parse_size(&SizeValue::Text("lots".into())).is_err());
        assert!(parse_size(&SizeValue::Bytes(-1)).is_err());
    }
}
