//! The PROXY parser against every header form, hostile input and its own encoders
//! (property tests: whatever is encoded parses back the same).

use super::*;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::os::fd::AsFd;

fn v4(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// Test-only v1 encoder.
fn encode_v1(h: &ProxyHeader) -> Vec<u8> {
    match (h.source, h.destination) {
        (Some(s), Some(d)) => {
            let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {proto} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).into_bytes()
        }
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// Test-only v2 encoder: PROXY over TCP (or LOCAL when the header has no addresses),
/// followed by `tlvs` as (type, value) pairs.
fn encode_v2(h: &ProxyHeader, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    let (cmd, fam) = match (h.source, h.destination) {
        (Some(SocketAddr::V4(s)), Some(SocketAddr::V4(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            (0x21, 0x11)
        }
        (Some(SocketAddr::V6(s)), Some(SocketAddr::V6(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            (0x21, 0x21)
        }
        _ => (0x20, 0x00),
    };
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    v2_raw(cmd, fam, &body)
}

fn v2_raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, fam]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn complete(b: &[u8]) -> (ProxyHeader, usize) {
    match parse(b) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("{:?}: {other:?}", b.escape_ascii().to_string()),
    }
}

fn err(b: &[u8]) -> ProxyError {
    match parse(b) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
        other => panic!("{:?} should be refused: {other:?}", b.escape_ascii().to_string()),
    }
}

/// Every strict prefix of a valid header is Incomplete with a true lower bound, and
/// the whole is Complete.
fn assert_splits(full: &[u8]) {
    let (_, len) = complete(full);
    for i in 0..len {
        match parse(&full[..i]) {
            Ok(Parsed::Incomplete { min_len }) => {
                assert!(min_len > i && min_len <= len, "prefix {i}: min_len {min_len}, header {len}")
            }
            other => panic!("prefix {i} of {:?}: {other:?}", full.escape_ascii().to_string()),
        }
    }
}

#[test]
fn v1_spec_examples() {
    let req = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    let (h, len) = complete(req);
    assert_eq!(h.source, v4("192.168.0.1:56324"));
    assert_eq!(h.destination, v4("192.168.0.11:443"));
    assert_eq!(&req[len..len + 3], b"GET");

    let max4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(max4.len(), 56);
    assert_eq!(complete(max4).0.source, v4("255.255.255.255:65535"));

    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let max6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(max6.len(), 104);
    let (h, len) = complete(max6.as_bytes());
    assert_eq!((h.source, len), (Some(SocketAddr::new(f.parse().unwrap(), 65535)), 104));

    assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::default(), 15));
    let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(worst.len(), V1_MAX_LEN);
    assert_eq!(complete(worst.as_bytes()), (ProxyHeader::default(), V1_MAX_LEN));

    for full in [&req[..], max4, max6.as_bytes(), b"PROXY UNKNOWN\r\n", worst.as_bytes()] {
        assert_splits(full);
    }
}

#[test]
fn v1_tcp6() {
    let (h, len) = complete(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\nxyz");
    assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
    assert_eq!(h.destination, Some("[::1]:65535".parse().unwrap()));
    assert_eq!(len, 36);
    assert_eq!(complete(b"PROXY TCP6 ::ffff:1.2.3.4 :: 0 0\r\n").0.source, Some("[::ffff:1.2.3.4]:0".parse().unwrap()));
}

#[test]
fn v1_refusals() {
    let bad: &[&[u8]] = &[
        b"PROXY TCP4 192.168.0.01 1.2.3.4 1 2\r\n", // leading zero in an octet
        b"PROXY TCP4 1.2.3.4 1.2.3.4 0443 2\r\n",   // leading zero in a port
        b"PROXY TCP4 1.2.3.4 1.2.3.4 +443 2\r\n",   // sign
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",  // port out of range
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",    // extra field
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",        // missing field
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",     // double space
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n",     // trailing space
        b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n",        // three octets
        b"PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n",    // five octets
        b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n",    // octet out of range
        b"PROXY TCP4 ::1 ::1 1 2\r\n",              // wrong family
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",      // wrong family
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",     // zone id
        b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",      // protocol
        b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n",      // case
        b"PROXY UNKNOWNX\r\n",                      // protocol
        b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",     // double space
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",        // LF alone
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX",       // CR alone
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\0\r\n",    // NUL
        b"PROXY UNKNOWN \xff\r\n",                  // not ASCII
        b"PROXY UNKNOWN a\nb\r\n",                  // LF inside
        b"PROXY\r\n",                               // nothing
        b"PROXY \r\n",                              // nothing
        b"PROXY TCP4\r\n",                          // nothing
        b"PROXY TCP4 \r\n",                         // nothing
        b"PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n",      // signature
    ];
    for b in bad {
        err(b);
    }
    // Refused as early as the bytes allow, not after waiting for the CRLF.
    err(b"PROXY X");
    err(b"PROXY TCP4 1.2\n");
    err(b"PROXY UNKNOWNX");
    err(b"PROXX");
    assert_eq!(err(b"GET / HTTP/1.1\r\n"), ProxyError::NotProxy { start: "GET / HTTP/1.1\\r\\n".into() });
}

#[test]
fn v1_length_limit() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN - 1, b'a');
    // 106 bytes without a CR: the CRLF can no longer end within 107 bytes.
    assert_eq!(err(&long), ProxyError::V1TooLong);
    assert!(matches!(parse(&long[..105]), Ok(Parsed::Incomplete { min_len: 107 })));
    let mut exact = long[..105].to_vec();
    exact.extend_from_slice(b"\r\n");
    assert_eq!(complete(&exact), (ProxyHeader::default(), 107));
    long.extend_from_slice(b"\r\n");
    assert_eq!(err(&long), ProxyError::V1TooLong);
}

#[test]
fn v2_proxy_ipv4_and_ipv6() {
    let h4 = ProxyHeader { source: v4("10.1.2.3:40000"), destination: v4("192.0.2.9:443") };
    let b = encode_v2(&h4, &[]);
    assert_eq!(b.len(), 28);
    assert_eq!(&b[12..16], &[0x21, 0x11, 0, 12]);
    assert_eq!(complete(&b), (h4, 28));
    assert_splits(&b);

    let h6 = ProxyHeader {
        source: Some("[2001:db8::7]:1234".parse().unwrap()),
        destination: Some("[2001:db8::1]:80".parse().unwrap()),
    };
    let mut b = encode_v2(&h6, &[]);
    assert_eq!(b.len(), 52);
    b.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(complete(&b), (h6, 52));
    assert_splits(&b);
}

#[test]
fn v2_local_ignores_family_and_addresses() {
    assert_eq!(complete(&v2_raw(0x20, 0x00, &[])), (ProxyHeader::default(), 16));
    // Receivers must honour the length for LOCAL, and ignore the family.
    assert_eq!(complete(&v2_raw(0x20, 0x11, &[7; 12])), (ProxyHeader::default(), 28));
    assert_eq!(complete(&v2_raw(0x20, 0xff, &[1, 2, 3])), (ProxyHeader::default(), 19));
    assert_splits(&v2_raw(0x20, 0x11, &[7; 12]));
}

#[test]
fn v2_families_without_usable_addresses() {
    let unix = v2_raw(0x21, 0x31, &[b'/'; 216]);
    assert_eq!(complete(&unix), (ProxyHeader::default(), 232));
    assert_eq!(complete(&v2_raw(0x21, 0x32, &[0; 216])).1, 232);
    assert_eq!(
        err(&v2_raw(0x21, 0x31, &[0; 215])),
        ProxyError::V2AddressTooShort { family: 0x31, len: 215, need: 216 }
    );
    assert_eq!(complete(&v2_raw(0x21, 0x00, &[])), (ProxyHeader::default(), 16));
    assert_eq!(complete(&v2_raw(0x21, 0x00, &[9; 5])), (ProxyHeader::default(), 21));
    assert_eq!(complete(&v2_raw(0x21, 0x10, &[9; 5])), (ProxyHeader::default(), 21));
    assert_eq!(complete(&v2_raw(0x21, 0x12, &[1; 12])), (ProxyHeader::default(), 28));
    assert_eq!(complete(&v2_raw(0x21, 0x22, &[1; 36])), (ProxyHeader::default(), 52));
    assert_splits(&unix);
}

#[test]
fn v2_tlvs_are_skipped_but_checked() {
    let h = ProxyHeader { source: v4("1.2.3.4:5"), destination: v4("6.7.8.9:10") };
    let tlvs = vec![(0x01, b"h2".to_vec()), (0x04, vec![]), (0x05, vec![0xaa; 128]), (0xe0, vec![0; 300])];
    let b = encode_v2(&h, &tlvs);
    assert_eq!(complete(&b), (h, b.len()));
    assert_splits(&b);
    // A TLV whose length runs past the header.
    let mut body = b[16..28].to_vec();
    body.extend_from_slice(&[0x01, 0, 5, b'a', b'b']);
    assert_eq!(err(&v2_raw(0x21, 0x11, &body)), ProxyError::V2Tlv { offset: 28 });
    // A truncated TLV header.
    let mut body = b[16..28].to_vec();
    body.extend_from_slice(&[0x04, 0, 0, 0x04, 0]);
    assert_eq!(err(&v2_raw(0x21, 0x11, &body)), ProxyError::V2Tlv { offset: 31 });
}

#[test]
fn v2_refusals() {
    assert_eq!(err(&v2_raw(0x11, 0x11, &[0; 12])), ProxyError::V2Version(1));
    assert_eq!(err(&v2_raw(0x31, 0x11, &[0; 12])), ProxyError::V2Version(3));
    assert_eq!(err(&v2_raw(0x22, 0x11, &[0; 12])), ProxyError::V2Command(2));
    assert_eq!(err(&v2_raw(0x2f, 0x11, &[0; 12])), ProxyError::V2Command(0xf));
    assert_eq!(err(&v2_raw(0x21, 0x41, &[0; 12])), ProxyError::V2Family(0x41));
    assert_eq!(err(&v2_raw(0x21, 0x13, &[0; 12])), ProxyError::V2Family(0x13));
    assert_eq!(err(&v2_raw(0x21, 0x11, &[0; 11])), ProxyError::V2AddressTooShort { family: 0x11, len: 11, need: 12 });
    assert_eq!(err(&v2_raw(0x21, 0x21, &[0; 12])), ProxyError::V2AddressTooShort { family: 0x21, len: 12, need: 36 });
    // Refused from the fixed part alone, before the bytes arrive.
    let mut big = v2_raw(0x21, 0x11, &[]);
    big[14..16].copy_from_slice(&((MAX_HEADER_LEN - 16 + 1) as u16).to_be_bytes());
    assert_eq!(err(&big), ProxyError::V2TooLarge { len: MAX_HEADER_LEN + 1 });
    big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(err(&big), ProxyError::V2TooLarge { len: 16 + 65535 });
    // The largest accepted header.
    let mut body = vec![0u8; 12];
    body.extend_from_slice(&[0x04]);
    body.extend_from_slice(&((MAX_HEADER_LEN - 16 - 12 - 3) as u16).to_be_bytes());
    body.resize(MAX_HEADER_LEN - 16, 0);
    assert_eq!(complete(&v2_raw(0x21, 0x11, &body)).1, MAX_HEADER_LEN);
    // Early refusal on the 13th and 14th bytes.
    let mut b = V2_SIGNATURE.to_vec();
    b.push(0x10);
    assert_eq!(err(&b), ProxyError::V2Version(1));
    b[12] = 0x21;
    b.push(0x51);
    assert_eq!(err(&b), ProxyError::V2Family(0x51));
    // A signature that goes wrong part way.
    let mut b = V2_SIGNATURE[..6].to_vec();
    b.push(b'X');
    assert!(matches!(err(&b), ProxyError::NotProxy { .. }));
}

#[test]
fn empty_and_signature_prefixes_are_incomplete() {
    assert_eq!(parse(b""), Ok(Parsed::Incomplete { min_len: V1_MIN_LEN }));
    assert_eq!(parse(b"\r"), Ok(Parsed::Incomplete { min_len: 16 }));
    assert_eq!(parse(b"P"), Ok(Parsed::Incomplete { min_len: V1_MIN_LEN }));
    assert!(matches!(err(b"\0"), ProxyError::NotProxy { .. }));
}

#[test]
fn addrs_layout_is_as_documented() {
    let h = ProxyHeader { source: v4("1.2.3.4:258"), destination: v4("5.6.7.8:80") };
    let mut out = vec![0xee];
    encode_addrs(&h, &mut out);
    let mut want = vec![0xee, 4, 0, 2, 1, 80, 0, 0, 0, 1, 2, 3, 4];
    want.extend_from_slice(&[0; 12]);
    want.extend_from_slice(&[5, 6, 7, 8]);
    want.extend_from_slice(&[0; 12]);
    assert_eq!(out, want);
    assert_eq!(decode_addrs(&out[1..]), Ok(h));

    let none = ProxyHeader::default();
    let mut out = Vec::new();
    encode_addrs(&none, &mut out);
    assert_eq!(out, [0; ADDRS_LEN]);
    assert_eq!(decode_addrs(&out), Ok(none));
    // Half a header is no header.
    out.clear();
    encode_addrs(&ProxyHeader { source: v4("1.2.3.4:1"), destination: None }, &mut out);
    assert_eq!(out, [0; ADDRS_LEN]);

    // A mixed pair becomes two IPv6 addresses.
    let mixed = ProxyHeader { source: v4("1.2.3.4:1"), destination: Some("[::1]:2".parse().unwrap()) };
    out.clear();
    encode_addrs(&mixed, &mut out);
    assert_eq!(out[0], 6);
    let back = decode_addrs(&out).unwrap();
    assert_eq!(back.source, Some("[::ffff:1.2.3.4]:1".parse().unwrap()));
    assert_eq!(back.destination, mixed.destination);

    assert_eq!(decode_addrs(&[0; 39]), Err(AddrsError::Length(39)));
    let mut bad = [0u8; ADDRS_LEN];
    bad[0] = 5;
    assert_eq!(decode_addrs(&bad), Err(AddrsError::Family(5)));
    assert!(!AddrsError::Family(5).to_string().is_empty());
}

fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    (c, s)
}

/// Waits until `n` bytes are queued on `s`, so a peek sees them all.
fn wait_queued(s: &std::net::TcpStream, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut b = [0u8; 256];
    while s.peek(&mut b).unwrap_or(0) < n {
        assert!(std::time::Instant::now() < deadline, "bytes did not arrive");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn read_header_consumes_exactly_the_header() {
    let (mut c, mut s) = tcp_pair();
    let h = ProxyHeader { source: v4("203.0.113.5:5555"), destination: v4("127.0.0.1:8080") };
    let mut b = encode_v2(&h, &[(0x04, vec![0; 3])]);
    b.extend_from_slice(b"hello");
    // Nothing yet, then half a header: WouldBlock, nothing consumed.
    assert_eq!(read_header(s.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    c.write_all(&b[..10]).unwrap();
    wait_queued(&s, 10);
    assert_eq!(read_header(s.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    c.write_all(&b[10..]).unwrap();
    wait_queued(&s, b.len());
    assert_eq!(read_header(s.as_fd()).unwrap(), h);
    let mut rest = [0u8; 5];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(&rest, b"hello");

    // v1, then EOF before any application data.
    let (mut c, mut s) = tcp_pair();
    c.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").unwrap();
    drop(c);
    wait_queued(&s, 32);
    assert_eq!(read_header(s.as_fd()).unwrap().source, v4("1.2.3.4:1"));
    assert_eq!(s.read(&mut rest).unwrap(), 0);
}

#[test]
fn read_header_reports_garbage_and_eof() {
    let (mut c, s) = tcp_pair();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    wait_queued(&s, 18);
    let e = read_header(s.as_fd()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.get_ref().and_then(|e| e.downcast_ref::<ProxyError>()).is_some(), "{e}");

    let (c, s) = tcp_pair();
    drop(c);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match read_header(s.as_fd()) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            other => panic!("{other:?}"),
        }
    }
}

fn socket_addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
    if v6 {
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)).boxed()
    } else {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)).boxed()
    }
}

fn header() -> impl Strategy<Value = ProxyHeader> {
    prop_oneof![
        Just(ProxyHeader::default()),
        any::<bool>()
            .prop_flat_map(|v6| (socket_addr(v6), socket_addr(v6)))
            .prop_map(|(s, d)| ProxyHeader { source: Some(s), destination: Some(d) }),
    ]
}

proptest! {
    #[test]
    fn v1_round_trip(h in header(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut b = encode_v1(&h);
        let n = b.len();
        prop_assert!(n <= V1_MAX_LEN);
        b.extend_from_slice(&tail);
        prop_assert_eq!(parse(&b), Ok(Parsed::Complete { header: h, len: n }));
    }

    #[test]
    fn v2_round_trip(h in header(),
                     tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8),
                     tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut b = encode_v2(&h, &tlvs);
        let n = b.len();
        b.extend_from_slice(&tail);
        prop_assert_eq!(parse(&b), Ok(Parsed::Complete { header: h, len: n }));
        let cut = n * 3 / 4;
        let incomplete = matches!(parse(&b[..cut]), Ok(Parsed::Incomplete { .. }));
        prop_assert!(incomplete);
    }

    #[test]
    fn addrs_round_trip(h in header()) {
        let mut out = Vec::new();
        encode_addrs(&h, &mut out);
        prop_assert_eq!(out.len(), ADDRS_LEN);
        prop_assert_eq!(decode_addrs(&out), Ok(h));
    }

    #[test]
    fn arbitrary_addrs_never_panic(b in prop::collection::vec(any::<u8>(), 0..48)) {
        let _ = decode_addrs(&b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
        check_outcome(&b)?;
    }

    #[test]
    fn near_valid_v2_never_panics(ver_cmd in any::<u8>(), fam in any::<u8>(), len in any::<u16>(),
                                  body in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[ver_cmd, fam]);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&body);
        check_outcome(&b)?;
    }

    #[test]
    fn near_valid_v1_never_panics(s in "PROXY (TCP4|TCP6|UNKNOWN)[ 0-9a-f.:]{0,110}(\r\n)?") {
        check_outcome(s.as_bytes())?;
    }
}

/// Whatever the input: no panic, and a consistent answer.
fn check_outcome(b: &[u8]) -> Result<(), TestCaseError> {
    match parse(b) {
        Ok(Parsed::Complete { header, len }) => {
            prop_assert!(len <= b.len() && len <= MAX_HEADER_LEN);
            prop_assert_eq!(header.source.is_some(), header.destination.is_some());
            // The header alone parses the same.
            prop_assert_eq!(parse(&b[..len]), Ok(Parsed::Complete { header, len }));
        }
        Ok(Parsed::Incomplete { min_len }) => prop_assert!(min_len > b.len() && min_len <= MAX_HEADER_LEN),
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}
