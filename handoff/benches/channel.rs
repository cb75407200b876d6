//! The channel hot path, for instruction counting: encode a CONN frame, `sendmsg` it
//! with one descriptor, `recvmsg` it on the other end, decode it; then the worker's ACK
//! and DONE going back, read and decoded by the master side. One iteration is what one
//! connection costs on the channel.
//!
//! Not a timing benchmark: run it under callgrind (`bench/callgrind.sh`), which counts
//! instructions, so a regression shows as a number that does not depend on how busy
//! the machine is. `ITERATIONS` (default 10 000) sets the loop count.

use std::os::fd::AsFd;

use handoff::__private::sys::fdpass::{recv_with_fds, send_with_fds, seqpacket_pair};
use handoff::__private::wire::{self, ConnItem};

fn main() {
    let n: u64 = std::env::var("ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let (master, worker) = seqpacket_pair().expect("socketpair");
    let (payload_fd, _keep) = rustix::pipe::pipe().expect("pipe");
    let mut frame = Vec::with_capacity(wire::MAX_FRAME_LEN);
    let mut buf = vec![0u8; wire::MAX_FRAME_LEN];
    let mut sum = 0u64;
    for id in 0..n {
        // master → worker: CONN with one descriptor
        wire::encode_conn(&mut frame, &[ConnItem { id, listener: 0, sock: wire::sock::TCP, flags: 0, addrs: None }]);
        send_with_fds(master.as_fd(), &frame, &[payload_fd.as_fd()]).expect("send CONN");
        let got = recv_with_fds(&worker, &mut buf, wire::MAX_CONNS).expect("recv CONN");
        let Ok(wire::Frame::Conn(items)) = wire::decode(&buf[..got.len]) else { panic!("bad CONN") };
        drop(got.fds); // the worker's copy
                       // worker → master: ACK, then DONE
        for kind in [wire::kind::ACK, wire::kind::DONE] {
            wire::encode_ids(&mut frame, kind, &[items[0].id]);
            send_with_fds(worker.as_fd(), &frame, &[]).expect("send ACK/DONE");
            let got = recv_with_fds(&master, &mut buf, 0).expect("recv ACK/DONE");
            if let Ok(wire::Frame::Ack(ids) | wire::Frame::Done(ids)) = wire::decode(&buf[..got.len]) {
                sum += ids[0];
            }
        }
    }
    assert_eq!(sum, 2 * n * (n.saturating_sub(1)) / 2);
}
