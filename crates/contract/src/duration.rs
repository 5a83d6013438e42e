//! One duration grammar for annotations and flags: jiff's friendly format
//! (`30s`, `5m`, `1h30m`, `1500ms`, also ISO 8601 `PT30S`), with a floor.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{value:?} is not a duration: write one like 30s, 5m, 1h or 1500ms")]
    Syntax { value: String },
    #[error("{value:?} is too short: write at least {min:?}")]
    TooShort { value: String, min: Duration },
}

/// Parses `v` and refuses anything shorter than `min` (or negative).
pub fn parse(v: &str, min: Duration) -> Result<Duration, DurationError> {
    let value = v.trim();
    let syntax = || DurationError::Syntax { value: value.to_owned() };
    let signed: jiff::SignedDuration = value.parse().map_err(|_| syntax())?;
    let d = Duration::try_from(signed).map_err(|_| syntax())?;
    if d < min {
        return Err(DurationError::TooShort { value: value.to_owned(), min });
    }
    Ok(d)
}

/// The controller's flags: at least 100 ms.
pub fn parse_flag(v: &str) -> Result<Duration, DurationError> {
    parse(v, Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_durations_parse() {
        let any = Duration::ZERO;
        assert_eq!(parse("60s", any), Ok(Duration::from_secs(60)));
        assert_eq!(parse("2m", any), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h", any), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m", any), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1500ms", any), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("PT30S", any), Ok(Duration::from_secs(30)));
        assert!(matches!(parse("5x", any), Err(DurationError::Syntax { .. })));
        assert!(matches!(parse("15", any), Err(DurationError::Syntax { .. })));
        assert!(matches!(parse("-5s", any), Err(DurationError::Syntax { .. })));
        assert!(matches!(parse_flag("10ms"), Err(DurationError::TooShort { .. })));
        assert!(parse("9s", Duration::from_secs(10)).unwrap_err().to_string().contains("at least 10s"));
    }
}
