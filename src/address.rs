//! Socket addresses as requests and rules write them (SPEC §3.3, §5):
//! `tcp:HOST:PORT` / `udp:HOST:PORT`, HOST an IPv4 address in canonical
//! dotted decimal, `[IPv6]`, or `*`; in rules also `any`, and PORTS a port
//! or a range `8000-8099`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The transport of a bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The host part of a requested bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// `*`: every IPv4 and IPv6 address.
    Wildcard,
    Ip(IpAddr),
}

impl Host {
    /// `0.0.0.0` and `[::]` are the wildcard, however they are written.
    fn is_wildcard(self) -> bool {
        match self {
            Host::Wildcard => true,
            Host::Ip(ip) => ip.is_unspecified(),
        }
    }
}

/// A bind a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddress {
    pub transport: Transport,
    pub host: Host,
    pub port: u16,
}

/// Why an address is malformed (a `bad_request`, or a load error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad address {text:?}: {why}")]
pub struct AddressError {
    pub text: String,
    pub why: &'static str,
}

fn split(text: &str) -> Result<(Transport, &str, &str), AddressError> {
    let bad = |why| AddressError {
        text: text.to_owned(),
        why,
    };
    let (transport, rest) = match text.split_once(':') {
        Some(("tcp", rest)) => (Transport::Tcp, rest),
        Some(("udp", rest)) => (Transport::Udp, rest),
        _ => return Err(bad("expected tcp:HOST:PORT or udp:HOST:PORT")),
    };
    let (host, port) = rest.rsplit_once(':').ok_or(bad("no port"))?;
    Ok((transport, host, port))
}

fn parse_host(text: &str, host: &str) -> Result<Host, AddressError> {
    let bad = |why| AddressError {
        text: text.to_owned(),
        why,
    };
    if host == "*" {
        return Ok(Host::Wildcard);
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = v6.parse().map_err(|_| bad("not an IPv6 address"))?;
        // An IPv4-mapped address is the IPv4 address it maps.
        return Ok(Host::Ip(match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(ip),
        }));
    }
    // Rust's parser takes exactly four decimal parts without leading
    // zeros: `010.0.0.1`, octal elsewhere, is refused.
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| bad("HOST must be a dotted-decimal IPv4 address, [IPv6] or *"))?;
    Ok(Host::Ip(IpAddr::V4(ip)))
}

fn parse_port(text: &str, port: &str) -> Result<u16, AddressError> {
    let bad = |why| AddressError {
        text: text.to_owned(),
        why,
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.starts_with('0') {
        return Err(bad(
            "PORT must be a decimal number from 1 to 65535, without leading zeros",
        ));
    }
    port.parse::<u16>()
        .map_err(|_| bad("PORT must be at most 65535"))
}

impl BindAddress {
    /// Parses a requested address; port 0 is refused.
    pub fn parse(text: &str) -> Result<BindAddress, AddressError> {
        let (transport, host, port) = split(text)?;
        Ok(BindAddress {
            transport,
            host: parse_host(text, host)?,
            port: parse_port(text, port)?,
        })
    }
}

/// Writes a bound socket's address as responses report it.
pub fn format_bound(transport: Transport, addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}:{}", transport.as_str(), a.ip(), a.port()),
        SocketAddr::V6(a) => format!("{}:[{}]:{}", transport.as_str(), a.ip(), a.port()),
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.transport.as_str();
        match self.host {
            Host::Wildcard => write!(f, "{t}:*:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{t}:{ip}:{}", self.port),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "{t}:[{ip}]:{}", self.port),
        }
    }
}

/// The host part of a rule's bind pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `any`: every address, the wildcard included.
    Any,
    /// `*`: the wildcard address only.
    Wildcard,
    Ip(IpAddr),
}

/// A rule's `binds` entry: `tcp:HOST:PORTS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindPattern {
    pub transport: Transport,
    pub host: HostPattern,
    pub ports: (u16, u16),
}

impl BindPattern {
    pub fn parse(text: &str) -> Result<BindPattern, AddressError> {
        let (transport, host, ports) = split(text)?;
        let host = match host {
            "any" => HostPattern::Any,
            "*" => HostPattern::Wildcard,
            other => match parse_host(text, other)? {
                Host::Wildcard => HostPattern::Wildcard,
                Host::Ip(ip) if ip.is_unspecified() => HostPattern::Wildcard,
                Host::Ip(ip) => HostPattern::Ip(ip),
            },
        };
        let ports = match ports.split_once('-') {
            Some((low, high)) => (parse_port(text, low)?, parse_port(text, high)?),
            None => {
                let port = parse_port(text, ports)?;
                (port, port)
            }
        };
        if ports.0 > ports.1 {
            return Err(AddressError {
                text: text.to_owned(),
                why: "a port range must go from low to high",
            });
        }
        Ok(BindPattern {
            transport,
            host,
            ports,
        })
    }

    pub fn matches(&self, addr: &BindAddress) -> bool {
        let host = match (self.host, addr.host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Wildcard, host) => host.is_wildcard(),
            (HostPattern::Ip(ip), Host::Ip(asked)) => ip == asked,
            (HostPattern::Ip(_), Host::Wildcard) => false,
        };
        self.transport == addr.transport
            && host
            && (self.ports.0..=self.ports.1).contains(&addr.port)
    }
}

impl fmt::Display for BindPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.transport.as_str())?;
        match self.host {
            HostPattern::Any => f.write_str("any")?,
            HostPattern::Wildcard => f.write_str("*")?,
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.ports {
            (low, high) if low == high => write!(f, ":{low}"),
            (low, high) => write!(f, ":{low}-{high}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requested_addresses_canonically() {
        let a = BindAddress::parse("tcp:127.0.0.1:80").unwrap();
        assert_eq!(a.to_string(), "tcp:127.0.0.1:80");
        assert_eq!(
            BindAddress::parse("udp:[::1]:53").unwrap().to_string(),
            "udp:[::1]:53"
        );
        assert_eq!(
            BindAddress::parse("tcp:*:443").unwrap().host,
            Host::Wildcard
        );
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(
            BindAddress::parse("tcp:[::ffff:10.0.0.1]:80")
                .unwrap()
                .to_string(),
            "tcp:10.0.0.1:80"
        );
        for bad in [
            "tcp:010.0.0.1:80",
            "tcp:127.0.0.1:0",
            "tcp:127.0.0.1:080",
            "tcp:127.0.0.1:65536",
            "tcp:127.1:80",
            "sctp:127.0.0.1:80",
            "tcp:::1:80",
            "tcp:[::1]",
            "tcp:localhost:80",
        ] {
            assert!(BindAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_hosts_and_port_ranges() {
        let p = BindPattern::parse("tcp:*:8000-8099").unwrap();
        assert!(p.matches(&BindAddress::parse("tcp:*:8000").unwrap()));
        assert!(p.matches(&BindAddress::parse("tcp:[::]:8099").unwrap()));
        assert!(p.matches(&BindAddress::parse("tcp:0.0.0.0:8050").unwrap()));
        assert!(!p.matches(&BindAddress::parse("tcp:127.0.0.1:8050").unwrap()));
        assert!(!p.matches(&BindAddress::parse("tcp:*:8100").unwrap()));
        assert!(!p.matches(&BindAddress::parse("udp:*:8000").unwrap()));
        let any = BindPattern::parse("udp:any:53").unwrap();
        assert!(any.matches(&BindAddress::parse("udp:*:53").unwrap()));
        assert!(any.matches(&BindAddress::parse("udp:[::1]:53").unwrap()));
        let one = BindPattern::parse("tcp:127.0.0.1:80").unwrap();
        assert!(one.matches(&BindAddress::parse("tcp:[::ffff:127.0.0.1]:80").unwrap()));
        assert!(!one.matches(&BindAddress::parse("tcp:*:80").unwrap()));
        assert!(BindPattern::parse("tcp:*:90-80").is_err());
    }
}

/// A `bind` request's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindRequest {
    pub address: BindAddress,
    /// `listen` backlog for TCP.
    pub backlog: i32,
    pub reuseport: bool,
    /// `IPV6_V6ONLY` for an IPv6 host.
    pub v6only: bool,
    /// TCP: call `listen` (false hands back a bound, unlistened socket).
    pub listen: bool,
}

impl BindRequest {
    pub fn new(address: BindAddress) -> BindRequest {
        BindRequest {
            address,
            backlog: 511,
            reuseport: false,
            v6only: true,
            listen: true,
        }
    }
}
