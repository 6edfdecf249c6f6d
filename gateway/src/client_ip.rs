//! Who the client is: the TCP peer, or, when that peer is a trusted reverse
//! proxy, the address the proxies recorded in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`; and the key limits count a client by (an IPv6
//! client by its /64, since one host usually holds a whole /64).

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The reverse proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    nets: Vec<IpNet>,
}

/// A `trusted_proxies` entry that is neither an address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1)")]
pub struct BadProxy {
    /// The entry as written.
    pub entry: String,
}

impl Proxies {
    /// Parses addresses (`10.0.0.1`, `::1`) and CIDRs (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<Proxies, BadProxy> {
        let nets = entries
            .iter()
            .map(|entry| {
                let text = entry.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadProxy {
                        entry: entry.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Proxies { nets })
    }

    /// Whether `ip` is one of the proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether any proxy is configured.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The client of a request whose TCP peer is `peer`. Only when `peer`
    /// is a trusted proxy are the forwarding headers read, walking their
    /// hops from the right (the hop the nearest proxy added) and skipping
    /// trusted proxies: the first untrusted hop is the client, since
    /// everything left of it was written by the client itself and may be
    /// forged. `Forwarded` wins over `X-Forwarded-For` when both are sent;
    /// a header that cannot be parsed is ignored (the peer is the client).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers).or_else(|| x_forwarded_for_hops(headers));
        let Some(hops) = hops else {
            return peer;
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.contains(hop) {
                break;
            }
        }
        client
    }
}

/// The key per-client limits use: an IPv4 address (IPv4-mapped IPv6
/// included) as it is, an IPv6 address by its /64 prefix.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d` (dual-stack sockets).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The `for=` addresses of every `Forwarded` element, in order; `None` if
/// there is no such header or any hop is not an address (`unknown`, an
/// obfuscated name): then the chain cannot be followed reliably.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let text = value.to_str().ok()?;
        for element in text.split(',') {
            for pair in element.split(';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("for") {
                    hops.push(parse_node(value.trim().trim_matches('"'))?);
                }
            }
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// The addresses of every `X-Forwarded-For` header, in order.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        for hop in text.split(',') {
            hops.push(parse_node(hop.trim())?);
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`
/// or a bare `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let proxies = Proxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.2, 10.1.2.3")]);
        // Rightmost untrusted hop: 198.51.100.2 (203.0.113.9 may be forged).
        assert_eq!(proxies.client(ip("127.0.0.1"), &xff), ip("198.51.100.2"));
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(proxies.client(ip("192.0.2.5"), &xff), ip("192.0.2.5"));
        assert_eq!(
            Proxies::default().client(ip("127.0.0.1"), &xff),
            ip("127.0.0.1")
        );
        let fwd = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http, for=\"[2001:db8::7]:4711\"",
            ),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &fwd), ip("2001:db8::7"));
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.2, 10.0.0.3")]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &all_trusted), ip("10.0.0.2"));
        let junk = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &junk), ip("127.0.0.1"));
        assert!(Proxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
