//! Which client a request comes from, for the per-IP limit.
//!
//! Without `trust_forwarded_for` the TCP peer is the client. With it, the gateway sits behind
//! reverse proxies that append the address they saw to `X-Forwarded-For`: the entries are
//! read right to left (the right-most was written by the proxy we trust), proxies listed in
//! `trusted_proxies` are skipped, and the first address that is not a trusted proxy is the
//! client. Entries left of it were written by the client itself and could be forged, so they
//! are never used. IPv6 clients are keyed by their /64 (one host usually owns a whole /64).

use std::net::{IpAddr, Ipv6Addr};

/// An IP network (`10.0.0.0/8`, `fd00::/8`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}` has a bad prefix length (0..={max})"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok().map(canonical);
    }
    let (host, _port) = s.rsplit_once(':')?;
    host.parse().ok().map(canonical)
}

/// The client address for limiting. `forwarded` holds every `X-Forwarded-For` header value
/// in order; it is read only when `trust` is on.
pub fn client_ip<'a>(
    peer: Option<IpAddr>,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
    trust: bool,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.map(canonical);
    if !trust {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut last = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            // Garbage from an untrusted hop: the proxy that passed it on is the best we know.
            None => return last,
            Some(ip) if trusted_proxies.iter().any(|n| n.contains(ip)) => last = Some(ip),
            Some(ip) => return Some(ip),
        }
    }
    last
}

/// The bucket id of a client: the address, or its /64 for IPv6.
pub fn bucket_id(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", Ipv6Addr::from(net))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_is_the_client_unless_forwarded_for_is_trusted() {
        let peer = Some(ip("10.0.0.5"));
        let xff = ["198.51.100.1, 203.0.113.9"];
        assert_eq!(client_ip(peer, xff.into_iter(), false, &[]), peer);
        // Right-most hop: what our proxy saw; the left one may be forged by the client.
        assert_eq!(
            client_ip(peer, xff.into_iter(), true, &[]),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let peer = Some(ip("10.0.0.5"));
        let xff = ["1.1.1.1", "198.51.100.1, 10.1.2.3"];
        assert_eq!(
            client_ip(peer, xff.into_iter(), true, &trusted),
            Some(ip("198.51.100.1"))
        );
        // Every hop trusted: the left-most one.
        assert_eq!(
            client_ip(peer, ["10.9.9.9, 10.1.1.1"].into_iter(), true, &trusted),
            Some(ip("10.9.9.9"))
        );
        // Garbage from the client side stops the walk at the last good hop.
        assert_eq!(
            client_ip(peer, ["nonsense, 10.1.1.1"].into_iter(), true, &trusted),
            Some(ip("10.1.1.1"))
        );
        // No header: the peer.
        assert_eq!(client_ip(peer, [].into_iter(), true, &trusted), peer);
    }

    #[test]
    fn hops_with_ports_and_v6() {
        assert_eq!(parse_hop("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop(" ::ffff:1.2.3.4 "), Some(ip("1.2.3.4")));
        assert_eq!(bucket_id(ip("2001:db8::1:2:3:4")), "2001:db8::/64");
        assert!(IpNet::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("11.0.0.1")));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
    }
}
