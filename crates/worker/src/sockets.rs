//! How much this process has sent to a peer that the peer has not taken yet: the kernel's send
//! queue (`SIOCOUTQ`) of our TCP socket connected to it (Linux). A frozen RTMP server stops
//! reading while its socket buffers still take megabytes (tens of seconds of stream), so the
//! sink keeps "writing" long after the server stopped: the send queue that never drains is
//! what tells.
//!
//! The socket is found among this process's descriptors (`/proc/self/fd`, `getpeername`) and
//! kept; each sample is then two system calls. (Reading `/proc/net/tcp` instead costs ≈ 8 ms
//! per read, as the kernel walks its whole connection table: 3 % of a core per worker at four
//! samples a second.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// The peer of socket `fd`, if it is a connected IPv4/IPv6 socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    // SAFETY: getpeername writes at most `len` bytes into `storage`, a sockaddr_storage; any
    // descriptor may be passed (non-sockets fail with ENOTSOCK).
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, (&raw mut storage).cast(), &mut len) != 0 {
            return None;
        }
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                let a: libc::sockaddr_in = std::ptr::read((&raw const storage).cast());
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                let a: libc::sockaddr_in6 = std::ptr::read((&raw const storage).cast());
                let v6 = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::new(
                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    u16::from_be(a.sin6_port),
                ))
            }
            _ => None,
        }
    }
}

/// Bytes in the send queue of socket `fd` not yet acknowledged by the peer.
fn send_queue_of(fd: RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0 && n >= 0).then_some(n as u64)
}

/// Descriptors of this process.
fn own_fds() -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The send queue to one peer, its socket found once and kept while it stays connected to it.
#[derive(Debug)]
pub struct SendQueue {
    peer: SocketAddr,
    fd: Option<RawFd>,
}

impl SendQueue {
    pub fn new(peer: SocketAddr) -> SendQueue {
        SendQueue { peer, fd: None }
    }

    /// Bytes this process sent to the peer that are still in the kernel's send queue; `None`
    /// when no socket of ours is connected to it.
    pub fn bytes(&mut self) -> Option<u64> {
        // The kept descriptor may have been closed and reused: check its peer each time.
        if self.fd.is_none_or(|fd| peer_of(fd) != Some(self.peer)) {
            self.fd = own_fds()
                .into_iter()
                .find(|&fd| peer_of(fd) == Some(self.peer));
        }
        send_queue_of(self.fd?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_real_connection_and_its_queue() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let mut q = SendQueue::new(peer);
        assert_eq!(q.bytes(), None, "not connected yet");
        let mut client = std::net::TcpStream::connect(peer).unwrap();
        let (_server, _) = listener.accept().unwrap();
        assert_eq!(q.bytes(), Some(0));
        // The server never reads: what the client writes beyond the receiver's buffer waits
        // in the client's send queue.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..2000 {
            if client.write(&chunk).is_err() {
                break;
            }
        }
        let n = q.bytes().expect("our socket to the peer");
        assert!(n > 0, "send queue {n}");
        drop(client);
        assert_eq!(q.bytes(), None, "closed");
    }
}
