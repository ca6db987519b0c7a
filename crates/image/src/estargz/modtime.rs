//! RFC 3339 UTC timestamps as the TOC's `modtime` carries them (Go's
//! `time.Time` JSON form), through the `time` crate.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds and nanoseconds since the Unix epoch.
pub type Timestamp = (i64, u32);

/// `2019-08-20T10:30:43Z`, with nanoseconds when there are any; a time
/// out of RFC 3339's years (0-9999) is written as the epoch.
pub fn format(t: Timestamp) -> String {
    let (secs, nanos) = t;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.replace_nanosecond(nanos).ok())
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; None when malformed.
pub fn parse(s: &str) -> Option<Timestamp> {
    let d = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((d.unix_timestamp(), d.nanosecond()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_values() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(parse("2019-08-20T10:30:43Z"), Some((1_566_297_043, 0)));
        assert_eq!(parse("2019-08-20T12:30:43+02:00"), Some((1_566_297_043, 0)));
        assert_eq!(parse("0001-01-01T00:00:00Z"), Some((-62_135_596_800, 0)));
        assert_eq!(
            parse("2000-02-29T00:00:00.5Z"),
            Some((951_782_400, 500_000_000))
        );
        for t in [
            (0, 0),
            (1_566_297_043, 0),
            (-62_135_596_800, 0),
            (951_782_400, 500_000_000),
        ] {
            assert_eq!(parse(&format(t)), Some(t), "{}", format(t));
        }
        for bad in [
            "",
            "yesterday",
            "2019-13-01T00:00:00Z",
            "2019-08-20T10:30:43",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
