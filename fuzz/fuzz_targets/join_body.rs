//! Fuzzes the admin listener's parsers with arbitrary bytes: the JSON body of a join (a server
//! entry) and the HTTP request head.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/parser_properties.rs"]
mod parser_properties;

fuzz_target!(|data: &[u8]| {
    parser_properties::join_body(data);
    parser_properties::admin_request_head(data);
});
