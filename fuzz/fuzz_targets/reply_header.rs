//! Fuzzes the reply-header parser with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/parser_properties.rs"]
mod parser_properties;

fuzz_target!(|data: &[u8]| {
    parser_properties::reply_header(data);
});
