//! `--max-conns-per-worker`: full workers get nothing; when all are full, clients wait
//! in the kernel backlog and are served as capacity frees. Nothing is refused.

mod util;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use util::*;

#[test]
fn clients_beyond_capacity_wait_in_the_backlog_and_are_served_later() {
    let h = Handoff::start(&["--listen", "127.0.0.1:0", "--workers", "4", "--max-conns-per-worker", "1"]);
    h.wait_ready(4);
    let addr = h.addr();
    // Six clients connect and ask; the kernel completes every handshake (backlog).
    let mut clients: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            s
        })
        .collect();
    // Four are answered, one per worker.
    let mut answered = Vec::new();
    let mut waiting = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(if answered.len() < 4 { WAIT } else { Duration::from_millis(300) })).unwrap();
        match read_one_response(c) {
            Some(r) => answered.push((i, r.worker.unwrap())),
            None => waiting.push(i),
        }
        if answered.len() == 4 && waiting.is_empty() && i < 4 {
            continue;
        }
    }
    let mut ws: Vec<usize> = answered.iter().map(|a| a.1).collect();
    ws.sort();
    assert_eq!(ws, [0, 1, 2, 3], "one connection per worker: {answered:?}");
    assert_eq!(waiting.len(), 2, "two clients wait while every worker is full");
    // Two served clients leave; the two waiting ones are now served.
    let leaving: Vec<usize> = answered.iter().take(2).map(|a| a.0).collect();
    for i in &leaving {
        clients[*i].shutdown(std::net::Shutdown::Both).unwrap();
    }
    for i in &waiting {
        clients[*i].set_read_timeout(Some(WAIT)).unwrap();
        let r = read_one_response(&mut clients[*i]).expect("a waiting client is served once capacity frees");
        assert_eq!(r.status, 200);
    }
}
