//! The PROXY protocol header parser: arbitrary first bytes of a connection never
//! panic, and every answer is consistent (a complete header lies within the bytes and
//! the size limit and parses the same alone; "incomplete" asks for more than was given;
//! the addresses survive the CONN-frame extension's encoding).
#![no_main]

use handoff::__private::proxy::{decode_addrs, encode_addrs, parse, Parsed, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete { header, len }) => {
            assert!(len <= data.len() && len <= MAX_HEADER_LEN);
            assert_eq!(header.source.is_some(), header.destination.is_some());
            assert_eq!(parse(&data[..len]), Ok(Parsed::Complete { header, len }));
            let mut ext = Vec::new();
            encode_addrs(&header, &mut ext);
            assert_eq!(decode_addrs(&ext), Ok(header));
        }
        Ok(Parsed::Incomplete { min_len }) => assert!(min_len > data.len() && min_len <= MAX_HEADER_LEN),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = decode_addrs(data);
});
