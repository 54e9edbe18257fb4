//! Open connections of this process by remote address, read from `/proc` at scrape time:
//! Pingora's connection pool does not expose its counts, the kernel knows them exactly.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Established TCP connections of this process, counted by remote address. Empty where
/// `/proc` is not available.
pub fn established_by_remote() -> HashMap<SocketAddr, u64> {
    let mut out = HashMap::new();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .collect();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some((remote, inode)) = parse_line(line) {
                if inodes.contains(&inode) {
                    *out.entry(remote).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// The remote address and inode of an ESTABLISHED socket line of `/proc/net/tcp{,6}`.
fn parse_line(line: &str) -> Option<(SocketAddr, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (remote, state, inode) = (fields.get(2)?, fields.get(3)?, fields.get(9)?);
    if *state != "01" {
        return None;
    }
    let (ip, port) = remote.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.swap_bytes(),
        )),
        32 => {
            // four 32-bit words, each in host (little-endian) order
            let mut bytes = [0u8; 16];
            for (w, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(w * 8..w * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.swap_bytes().to_be_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), inode.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_lines() {
        let v4 = "   1: 0100007F:9C40 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_line(v4),
            Some(("127.0.0.1:8000".parse().unwrap(), 123456))
        );
        let listen = v4.replacen(" 01 ", " 0A ", 1);
        assert_eq!(parse_line(&listen), None);
        let v6 = "   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 77 1";
        assert_eq!(parse_line(v6), Some(("[::1]:8000".parse().unwrap(), 77)));
    }

    #[test]
    fn counts_own_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        // both ends are ours: the two client sockets have `addr` as remote
        assert_eq!(established_by_remote().get(&addr), Some(&2));
    }
}
