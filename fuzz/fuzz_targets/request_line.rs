//! Fuzzes the request-line parser and the line splitter with arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/parser_properties.rs"]
mod parser_properties;

fuzz_target!(|data: &[u8]| {
    parser_properties::request_line(data);
    // The first byte picks a small limit and buffer, so lines hit both often.
    if let Some((&knobs, rest)) = data.split_first() {
        let limit = usize::from(knobs & 0x1f);
        let buffer = 1 + usize::from(knobs >> 5);
        parser_properties::line_splitting(rest, limit, buffer);
    }
});
