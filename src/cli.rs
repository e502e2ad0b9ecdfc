//! Small helpers the three programs share to read their command lines.

use std::process::ExitCode;
use std::time::Duration;

/// Ends a program: success, or one line on stderr naming the program and what went wrong.
pub fn exit(program: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a number of seconds such as `0.5` (for clap's `value_parser`).
///
/// # Errors
/// A message saying what a valid value looks like.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 =
        s.parse().map_err(|_| format!("{s:?} is not a number of seconds (e.g. 0.5)"))?;
    if !(0.0..=MAX_SECONDS).contains(&secs) {
        return Err(format!("{s:?} must be a number of seconds from 0 to {MAX_SECONDS}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a number of seconds for a timeout that has no "off": more than 0.
///
/// # Errors
/// As [`parse_seconds`], and for 0.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be more than 0 seconds")),
        d => Ok(d),
    }
}

/// Longest duration accepted on a command line: a day is more than any timeout here needs.
pub(crate) const MAX_SECONDS: f64 = 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.05"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("fast").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("1e19").is_err());
        assert_eq!(parse_seconds("86400"), Ok(Duration::from_secs(86_400)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("1e-10").is_err());
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_millis(500)));
    }
}
