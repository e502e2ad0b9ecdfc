//! The protocol's error codes: one [`Error`] variant per `ERR <code>`, so that a failure
//! becomes a reply in exactly one place ([`Error::header_line`]).

use std::fmt;
use std::io;

/// Longest message an `ERR` line carries; longer ones are cut so a reply stays one short line.
pub const MAX_MESSAGE_LEN: usize = 1000;

/// Why a request failed. Each variant is one `ERR <code>` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `bad_request`: the request line is not a valid request.
    BadRequest(String),
    /// `not_found`: the file does not exist.
    NotFound(String),
    /// `forbidden`: the request is understood but not allowed.
    Forbidden(String),
    /// `too_large`: the request or the reply is over a limit.
    TooLarge(String),
    /// `sql`: SQLite refused or failed the query.
    Sql(String),
    /// `timeout`: something took longer than its limit.
    Timeout(String),
    /// `busy`: every server stayed busy for too long, or too many clients.
    Busy(String),
    /// `unavailable`: no server could answer.
    Unavailable(String),
    /// `internal`: a fault on our side (an I/O error reading a file, say).
    Internal(String),
}

impl Error {
    /// Every code, as written on the wire.
    pub const CODES: [&'static str; 9] = [
        "bad_request",
        "not_found",
        "forbidden",
        "too_large",
        "sql",
        "timeout",
        "busy",
        "unavailable",
        "internal",
    ];

    /// The code as written on the wire (`bad_request`, `not_found`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::Forbidden(_) => "forbidden",
            Error::TooLarge(_) => "too_large",
            Error::Sql(_) => "sql",
            Error::Timeout(_) => "timeout",
            Error::Busy(_) => "busy",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            Error::BadRequest(m)
            | Error::NotFound(m)
            | Error::Forbidden(m)
            | Error::TooLarge(m)
            | Error::Sql(m)
            | Error::Timeout(m)
            | Error::Busy(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => m,
        }
    }

    /// Builds the variant for a wire `code`; `None` for a code this version does not know.
    pub fn from_code(code: &str, message: impl Into<String>) -> Option<Error> {
        let m = message.into();
        Some(match code {
            "bad_request" => Error::BadRequest(m),
            "not_found" => Error::NotFound(m),
            "forbidden" => Error::Forbidden(m),
            "too_large" => Error::TooLarge(m),
            "sql" => Error::Sql(m),
            "timeout" => Error::Timeout(m),
            "busy" => Error::Busy(m),
            "unavailable" => Error::Unavailable(m),
            "internal" => Error::Internal(m),
            _ => return None,
        })
    }

    /// The whole reply line, `ERR <code> <message>\n`, with the message made one short line.
    pub fn header_line(&self) -> String {
        format!("ERR {} {}\n", self.code(), one_line(self.message()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

/// Folds line breaks and control characters into spaces and cuts to [`MAX_MESSAGE_LEN`]
/// bytes on a character boundary, so a message can never break the framing. Messages often
/// echo the request, so bidirectional-text controls are folded too: a reply must not make a
/// terminal show text in another order than it was sent.
pub fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_LEN));
    for c in message.chars() {
        if out.len() + c.len_utf8() > MAX_MESSAGE_LEN {
            break;
        }
        let hidden =
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        out.push(if hidden { ' ' } else { c });
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in Error::CODES {
            let e = Error::from_code(code, "m").expect(code);
            assert_eq!(e.code(), code);
            assert_eq!(e.message(), "m");
        }
        assert_eq!(Error::from_code("nope", "m"), None);
    }

    #[test]
    fn header_line_is_one_line() {
        let e = Error::Sql("near \"x\":\nsyntax error\r".into());
        assert_eq!(e.header_line(), "ERR sql near \"x\": syntax error\n");
    }

    #[test]
    fn bidi_controls_are_folded() {
        let e = Error::Sql("near \"\u{202e}txt.exe\u{2066}\": syntax error".into());
        assert_eq!(
            e.header_line(),
            "ERR sql near \" txt.exe \": syntax error\n"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_MESSAGE_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
