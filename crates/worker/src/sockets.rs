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

/// The socket's inode (`socket:[N]` in `/proc/self/fd`): what tells two sockets apart, where
/// descriptor numbers are reused.
fn inode_of(fd: RawFd) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Sockets already taken by a [`SendQueue`]: several outputs may go to one server, each must
/// watch (and shut down) its own connection.
static CLAIMED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// The send queue of one connection to a peer: the first socket of ours connected to it that
/// no other [`SendQueue`] holds, found once it exists and kept while it stays open.
#[derive(Debug)]
pub struct SendQueue {
    peer: SocketAddr,
    /// Descriptor and inode.
    socket: Option<(RawFd, u64)>,
}

impl SendQueue {
    pub fn new(peer: SocketAddr) -> SendQueue {
        SendQueue { peer, socket: None }
    }

    /// Whether the kept socket is still the one found (open, same inode, same peer).
    fn still_open(&self) -> Option<RawFd> {
        let (fd, inode) = self.socket?;
        (inode_of(fd) == Some(inode) && peer_of(fd) == Some(self.peer)).then_some(fd)
    }

    fn release(&mut self) {
        if let Some((_, inode)) = self.socket.take() {
            CLAIMED.lock().unwrap().retain(|&i| i != inode);
        }
    }

    /// Bytes this process sent to the peer on this connection that are still in the
    /// kernel's send queue; `None` while no (unclaimed) socket of ours is connected to it.
    pub fn bytes(&mut self) -> Option<u64> {
        if self.socket.is_some() && self.still_open().is_none() {
            self.release();
        }
        if self.socket.is_none() {
            let mut claimed = CLAIMED.lock().unwrap();
            self.socket = own_fds().into_iter().find_map(|fd| {
                let inode = inode_of(fd)?;
                (peer_of(fd) == Some(self.peer) && !claimed.contains(&inode)).then_some((fd, inode))
            });
            if let Some((_, inode)) = self.socket {
                claimed.push(inode);
            }
        }
        send_queue_of(self.still_open()?)
    }

    /// Shuts the connection down (both ways): a thread blocked writing to, or reading from, a
    /// frozen server returns with an error, so that its pipeline can stop. The descriptor
    /// stays open for its owner to close.
    pub fn shut_down(&mut self) -> bool {
        let Some(fd) = self.still_open() else {
            return false;
        };
        // SAFETY: shutdown(2) on a socket descriptor of ours that is still open.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) == 0 }
    }
}

impl Drop for SendQueue {
    fn drop(&mut self) {
        self.release();
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
        // A second queue to the same peer does not take the first one's connection.
        let mut other = SendQueue::new(peer);
        assert_eq!(other.bytes(), None, "the only connection is taken");
        let client2 = std::net::TcpStream::connect(peer).unwrap();
        let (_server2, _) = listener.accept().unwrap();
        assert_eq!(other.bytes(), Some(0), "its own, empty");
        // Shutting one down wakes nothing else and closes only it.
        assert!(other.shut_down());
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!(
            (&client2).read(&mut buf).unwrap(),
            0,
            "shut down: end of stream"
        );
        assert!(q.bytes().is_some_and(|n| n > 0), "the first is untouched");
        drop(client);
        assert_eq!(q.bytes(), None, "closed");
    }
}
