//! How much this process has sent to a peer that the peer has not taken yet: the kernel's send
//! queue of our TCP sockets connected to it (`/proc/net/tcp`, `/proc/net/tcp6`; Linux). A
//! frozen RTMP server stops reading while its socket buffers still take megabytes (tens of
//! seconds of stream), so the sink keeps "writing" long after the server stopped: the send
//! queue that never drains is what tells.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

/// Inodes of the sockets this process holds.
fn own_socket_inodes() -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return inodes;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    inodes
}

/// `ADDR:PORT` of /proc/net/tcp (IPv4: 8 hex digits, the address as a little-endian u32;
/// IPv6: 32 hex digits, four little-endian u32 words).
fn parse_address(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: IpAddr = match addr.len() {
        8 => u32::from_str_radix(addr, 16)
            .ok()?
            .swap_bytes()
            .to_be_bytes()
            .into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Sum of the send queues (bytes) of the sockets among `inodes` connected to `peer`, from the
/// text of /proc/net/tcp; `None` when none is.
fn send_queue_in(table: &str, peer: SocketAddr, inodes: &HashSet<u64>) -> Option<u64> {
    let mut total = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let (Some(rem), Some(queues), Some(inode)) = (f.get(2), f.get(4), f.get(9)) else {
            continue;
        };
        if parse_address(rem) != Some(peer)
            || !inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
        {
            continue;
        }
        let tx = queues
            .split_once(':')
            .and_then(|(tx, _)| u64::from_str_radix(tx, 16).ok())
            .unwrap_or(0);
        *total.get_or_insert(0) += tx;
    }
    total
}

/// Bytes this process sent to `peer` that are still in the kernel's send queues; `None` when
/// no socket of ours is connected to it (or not on Linux).
pub fn send_queue(peer: SocketAddr) -> Option<u64> {
    let inodes = own_socket_inodes();
    let mut total = None;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(table) = std::fs::read_to_string(file)
            && let Some(q) = send_queue_in(&table, peer, &inodes)
        {
            *total.get_or_insert(0) += q;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_proc_net_tcp() {
        assert_eq!(
            parse_address("0100007F:078F"),
            Some("127.0.0.1:1935".parse().unwrap())
        );
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:078F"),
            Some("127.0.0.1:1935".parse().unwrap())
        );
        assert_eq!(parse_address("zz:1"), None);
    }

    #[test]
    fn sums_the_send_queues_of_our_sockets_to_the_peer() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A000 0100007F:078F 01 00010000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 0100007F:A001 0100007F:078F 01 00000100:00000000 00:00000000 00000000     0        0 222 1 0
   2: 0100007F:A002 0100007F:1F90 01 00000500:00000000 00:00000000 00000000     0        0 111 1 0
";
        let peer: SocketAddr = "127.0.0.1:1935".parse().unwrap();
        let ours: HashSet<u64> = [111].into();
        assert_eq!(send_queue_in(table, peer, &ours), Some(0x10000));
        let both: HashSet<u64> = [111, 222].into();
        assert_eq!(send_queue_in(table, peer, &both), Some(0x10100));
        assert_eq!(send_queue_in(table, peer, &HashSet::new()), None);
    }

    #[test]
    fn finds_a_real_connection() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(peer).unwrap();
        let (_server, _) = listener.accept().unwrap();
        // The server never reads: what the client writes beyond the receiver's buffer waits
        // in the client's send queue.
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..2000 {
            if client.write(&chunk).is_err() {
                break;
            }
        }
        let q = send_queue(peer).expect("our socket to the peer");
        assert!(q > 0, "send queue {q}");
    }
}
