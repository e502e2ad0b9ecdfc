//! The balancer's `--allow` list: IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a
//! bare address). `ipnet` does the bit work; this gives a bad `--allow` a clear message.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses `address/prefix` or a bare address (the network of that one address).
/// Bits set past the prefix (`10.1.2.3/8`) are refused: they usually mean a typo.
///
/// # Errors
/// A message saying what is wrong and what a network looks like.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    let addr = s.split_once('/').map_or(s, |(addr, _)| addr);
    let ip: IpAddr = addr.parse().map_err(|_| {
        format!("{s:?} is not a network: expected an address like 10.0.0.0/8 or fd00::/8")
    })?;
    if addr == s {
        return Ok(ip.into());
    }
    let width = if ip.is_ipv4() { 32 } else { 128 };
    let net: IpNet = s.parse().map_err(|_| {
        format!("{s:?}: the prefix length after `/` must be a number from 0 to {width}")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has bits set past its /{} prefix; did you mean {}?",
            net.prefix_len(),
            net.trunc()
        ));
    }
    Ok(net)
}

/// Whether the `--allow` list lets a client at `ip` in: every address when it is empty. An
/// IPv4 address seen as IPv4-mapped IPv6 (`::ffff:10.1.2.3`, dual-stack) matches IPv4 networks.
pub fn permits(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.is_empty() || networks.iter().any(|n| n.contains(&ip))
}

/// The `--allow` list for the log.
pub fn describe(networks: &[IpNet]) -> String {
    if networks.is_empty() {
        return "every address".into();
    }
    let names: Vec<String> = networks.iter().map(IpNet::to_string).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpNet {
        parse_network(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Whether a list of just `net` lets `ip` in.
    trait Admits {
        fn admits(&self, ip: IpAddr) -> bool;
    }

    impl Admits for IpNet {
        fn admits(&self, ip: IpAddr) -> bool {
            permits(&[*self], ip)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_and_ipv6_networks() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "10.0.0.0/0008",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "256.0.0.0/8",
            "10.0.0.0 /8",
            "::/129",
            "fd00::/300",
            "example.com/8",
            "10.1.2.3/8",
            "fd00::1/8",
        ] {
            assert!(parse_network(bad).is_err(), "{bad:?} was accepted");
        }
        let e = parse_network("10.1.2.3/8").unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
    }

    #[test]
    fn matches_addresses_by_prefix() {
        let net = cidr("10.0.0.0/8");
        assert!(net.admits(ip("10.0.0.0")));
        assert!(net.admits(ip("10.255.255.255")));
        assert!(!net.admits(ip("11.0.0.0")));
        assert!(!net.admits(ip("9.255.255.255")));
        assert!(cidr("192.168.1.7").admits(ip("192.168.1.7")));
        assert!(!cidr("192.168.1.7").admits(ip("192.168.1.6")));
        assert!(cidr("172.16.0.0/12").admits(ip("172.31.1.1")));
        assert!(!cidr("172.16.0.0/12").admits(ip("172.32.0.0")));
        assert!(cidr("0.0.0.0/0").admits(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").admits(ip("::1")));

        let net = cidr("fd00::/8");
        assert!(net.admits(ip("fd12:3456::1")));
        assert!(!net.admits(ip("fe80::1")));
        assert!(cidr("::/0").admits(ip("2001:db8::1")));
        assert!(!cidr("::/0").admits(ip("127.0.0.1")));
        assert!(cidr("::1").admits(ip("::1")));
        assert!(!cidr("::1").admits(ip("::2")));
        assert!(cidr("2001:db8::/127").admits(ip("2001:db8::1")));
        assert!(!cidr("2001:db8::/127").admits(ip("2001:db8::2")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        assert!(cidr("127.0.0.0/8").admits(ip("::ffff:127.0.0.1")));
        assert!(!cidr("10.0.0.0/8").admits(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn an_empty_allow_list_permits_everyone() {
        assert!(permits(&[], ip("203.0.113.9")));
        assert!(permits(&[], ip("::1")));
        assert_eq!(describe(&[]), "every address");
        let some = [cidr("10.0.0.0/8"), cidr("::1")];
        assert!(permits(&some, ip("10.9.8.7")));
        assert!(permits(&some, ip("::1")));
        assert!(!permits(&some, ip("127.0.0.1")));
        assert_eq!(describe(&some), "10.0.0.0/8, ::1/128");
    }
}
