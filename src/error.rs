//! The protocol's error codes: one [`Code`] per `ERR <code>`, written once, and an [`Error`]
//! that is a code plus a message, so that a failure becomes a reply in exactly one place
//! ([`Error::header_line`]) and counters can be indexed by code.

use std::fmt;
use std::io;

/// Longest message an `ERR` line carries; longer ones are cut so a reply stays one short line.
const MAX_MESSAGE_LEN: usize = 1000;

/// Defines [`Code`], [`Code::ALL`] and [`Code::as_str`] from one list of variants and their
/// names on the wire.
macro_rules! codes {
    ($($(#[doc = $doc:literal])* $code:ident = $wire:literal,)*) => {
        /// Why a request failed: one variant per `ERR <code>` on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[doc = $doc])* $code,)*
        }

        impl Code {
            /// Every code, in the order of their variants (`ALL[code as usize] == code`).
            pub const ALL: [Code; [$($wire),*].len()] = [$(Code::$code),*];

            /// The code as written on the wire (`bad_request`, `not_found`, ...).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$code => $wire,)*
                }
            }
        }
    };
}

codes! {
    /// The request line is not a valid request.
    BadRequest = "bad_request",
    /// The file does not exist.
    NotFound = "not_found",
    /// The request is understood but not allowed.
    Forbidden = "forbidden",
    /// The request or the reply is over a limit.
    TooLarge = "too_large",
    /// The database refused or failed the query.
    Sql = "sql",
    /// Something took longer than its limit.
    Timeout = "timeout",
    /// Every server stayed busy for too long, or too many clients.
    Busy = "busy",
    /// No server could answer, or a server's database cannot be reached.
    Unavailable = "unavailable",
    /// A fault on our side (an I/O error reading a file, say).
    Internal = "internal",
}

impl Code {
    /// The code written `code` on the wire; `None` for one this version does not know.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// Whether the request was at fault (a typo, a bad query, a missing file) rather than the
    /// server: those are counted apart, so a user's mistake is not a server's error.
    pub fn is_client_error(self) -> bool {
        matches!(
            self,
            Code::BadRequest | Code::NotFound | Code::Forbidden | Code::TooLarge | Code::Sql
        )
    }

    /// An error of this code saying `message`.
    pub fn msg(self, message: impl Into<String>) -> Error {
        Error { code: self, message: message.into() }
    }
}

/// Why a request failed: an `ERR <code> <message>` line on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: Code,
    message: String,
}

impl Error {
    /// Its code.
    pub fn kind(&self) -> Code {
        self.code
    }

    /// The code as written on the wire (`bad_request`, `not_found`, ...).
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
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
        Code::Internal.msg(e.to_string())
    }
}

/// Folds line breaks and control characters into spaces and cuts to [`MAX_MESSAGE_LEN`]
/// bytes on a character boundary, so a message can never break the framing. Messages often
/// echo the request, so bidirectional-text controls are folded too: a reply must not make a
/// terminal show text in another order than it was sent.
fn one_line(message: &str) -> String {
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
        for (i, code) in Code::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, i);
            let e = Code::parse(code.as_str()).unwrap().msg("m");
            assert_eq!(e.kind(), code);
            assert_eq!(e.message(), "m");
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn header_line_is_one_line() {
        let e = Code::Sql.msg("near \"x\":\nsyntax error\r");
        assert_eq!(e.header_line(), "ERR sql near \"x\": syntax error\n");
    }

    #[test]
    fn bidi_controls_are_folded() {
        let e = Code::Sql.msg("near \"\u{202e}txt.exe\u{2066}\": syntax error");
        assert_eq!(e.header_line(), "ERR sql near \" txt.exe \": syntax error\n");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_MESSAGE_LEN);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
