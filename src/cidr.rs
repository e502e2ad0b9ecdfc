//! IP networks in CIDR notation (`10.0.0.0/8`, `fd00::/8`, or a bare address), and the
//! balancer's allow list built from its `--allow` flags.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address and how many of its leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address, with the bits past the prefix cleared.
    network: IpAddr,
    /// Leading bits that must match: 0..=32 for IPv4, 0..=128 for IPv6.
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4 address that reaches us as an IPv4-mapped
    /// IPv6 address (`::ffff:10.1.2.3`, on a dual-stack socket) matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u32::from(ip).into(), self.prefix, 32) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// Keeps the leading `prefix` bits of a `width`-bit address and clears the rest.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - prefix);
    let width_mask = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    bits & keep & width_mask
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `address/prefix` or a bare address (the network of that one address).
    /// Bits set past the prefix (`10.1.2.3/8`) are refused: they usually mean a typo.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not a network: expected an address like 10.0.0.0/8 or fd00::/8")
        })?;
        let width: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => {
                let digits_only =
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if digits_only && n <= width => n,
                    _ => {
                        return Err(format!(
                            "{s:?}: the prefix length after `/` must be a number from 0 to {width}"
                        ))
                    }
                }
            }
        };
        let bits = match network {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        if mask(bits, prefix, width) != bits {
            return Err(format!(
                "{s:?} has bits set past its /{prefix} prefix; did you mean {}?",
                Cidr {
                    network: from_bits(mask(bits, prefix, width), network.is_ipv4()),
                    prefix
                }
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

fn from_bits(bits: u128, v4: bool) -> IpAddr {
    if v4 {
        // Only called with bits that came from an IPv4 address, so they fit in 32 bits.
        IpAddr::V4(u32::try_from(bits).unwrap_or(0).into())
    } else {
        IpAddr::V6(bits.into())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Which client addresses the balancer serves: every address when the list is empty (the
/// default), otherwise only those in one of its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Cidr>,
}

impl AllowList {
    /// A list allowing exactly these networks (every address if `networks` is empty).
    pub fn new(networks: Vec<Cidr>) -> AllowList {
        AllowList { networks }
    }

    /// Whether a client at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|n| n.contains(ip))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.networks.is_empty() {
            return f.write_str("every address");
        }
        let names: Vec<String> = self.networks.iter().map(Cidr::to_string).collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
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
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was accepted");
        }
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
    }

    #[test]
    fn matches_addresses_by_prefix() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(cidr("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!cidr("192.168.1.7").contains(ip("192.168.1.6")));
        assert!(cidr("172.16.0.0/12").contains(ip("172.31.1.1")));
        assert!(!cidr("172.16.0.0/12").contains(ip("172.32.0.0")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));

        let net = cidr("fd00::/8");
        assert!(net.contains(ip("fd12:3456::1")));
        assert!(!net.contains(ip("fe80::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("127.0.0.1")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(!cidr("::1").contains(ip("::2")));
        assert!(cidr("2001:db8::/127").contains(ip("2001:db8::1")));
        assert!(!cidr("2001:db8::/127").contains(ip("2001:db8::2")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn an_empty_allow_list_permits_everyone() {
        let all = AllowList::default();
        assert!(all.permits(ip("203.0.113.9")));
        assert!(all.permits(ip("::1")));
        assert_eq!(all.to_string(), "every address");
        let some = AllowList::new(vec![cidr("10.0.0.0/8"), cidr("::1")]);
        assert!(some.permits(ip("10.9.8.7")));
        assert!(some.permits(ip("::1")));
        assert!(!some.permits(ip("127.0.0.1")));
        assert_eq!(some.to_string(), "10.0.0.0/8, ::1/128");
    }
}
