//! Where a token may be used from: client addresses and the networks a token is restricted to.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::error::{Invalid, quote};

/// At most this many networks per token: a restriction, not a firewall.
pub const MAX_ALLOWED_CIDRS: usize = 32;

/// An end client's address. IPv4-mapped IPv6 (`::ffff:192.0.2.1`) is read as the IPv4 address,
/// so that one client matches the same networks however its address was written.
pub fn parse_client_ip(s: &str) -> Result<IpAddr, Invalid> {
    IpAddr::from_str(s)
        .map(|ip| ip.to_canonical())
        .map_err(|_| Invalid::new(format!("{} is not an IPv4 or IPv6 address", quote(s))))
}

/// The networks a token may be used from; empty means anywhere. Held canonical (host bits
/// cleared), sorted and without duplicates, so stored and returned values are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedCidrs(Box<[IpNet]>);

impl AllowedCidrs {
    /// Each entry is a CIDR (`10.0.0.0/8`) or a bare address (that one address). A CIDR with
    /// host bits set (`10.1.2.3/8`) is accepted and stored as its network (`10.0.0.0/8`).
    /// Returns every bad entry's index with why.
    pub fn parse<'a>(
        entries: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<Self, Vec<(usize, Invalid)>> {
        if entries.len() > MAX_ALLOWED_CIDRS {
            return Err(vec![(
                usize::MAX,
                Invalid::new(format!(
                    "at most {MAX_ALLOWED_CIDRS} networks, got {}",
                    entries.len()
                )),
            )]);
        }
        let mut networks = Vec::new();
        let mut bad = Vec::new();
        for (i, entry) in entries.enumerate() {
            match parse_network(entry) {
                Ok(net) => networks.push(net),
                Err(invalid) => bad.push((i, invalid)),
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        networks.sort();
        networks.dedup();
        Ok(Self(networks.into()))
    }

    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a client may use the token: always when unrestricted, else only from an address
    /// inside one of the networks.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        client.is_some_and(|ip| self.0.iter().any(|net| net.contains(&ip)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }

    /// The stored form: canonical CIDRs separated by single spaces.
    pub fn to_stored(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads the stored form back; `None` if it does not parse (a corrupt row).
    pub fn from_stored(stored: &str) -> Option<Self> {
        stored
            .split_whitespace()
            .map(|s| IpNet::from_str(s).ok())
            .collect::<Option<Box<[_]>>>()
            .map(Self)
    }

    /// Roughly the heap bytes held, for the cache's byte bound.
    pub fn approximate_bytes(&self) -> usize {
        self.0.len() * std::mem::size_of::<IpNet>()
    }
}

fn parse_network(entry: &str) -> Result<IpNet, Invalid> {
    let parsed = if entry.contains('/') {
        IpNet::from_str(entry).ok()
    } else {
        IpAddr::from_str(entry).ok().map(IpNet::from)
    };
    parsed
        .map(|net| match net {
            // An IPv4-mapped network is the IPv4 network, as for client addresses.
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                let v4 = v6
                    .addr()
                    .to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
            }
            other => other,
        })
        .map(|net| net.trunc())
        .ok_or_else(|| {
            Invalid::new(format!(
                "{} is not a CIDR (such as 10.0.0.0/8 or 2001:db8::/32) or an IP address",
                quote(entry)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(entries: &[&str]) -> AllowedCidrs {
        AllowedCidrs::parse(entries.iter().copied()).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(parse_client_ip(s).unwrap())
    }

    #[test]
    fn networks_are_stored_canonical_sorted_and_once() {
        let parsed = cidrs(&["10.1.2.3/8", "192.0.2.7", "2001:DB8::1/32", "10.0.0.0/8"]);
        assert_eq!(parsed.to_stored(), "10.0.0.0/8 192.0.2.7/32 2001:db8::/32");
        assert_eq!(AllowedCidrs::from_stored(&parsed.to_stored()), Some(parsed));
        assert_eq!(cidrs(&["2001:db8::5"]).to_stored(), "2001:db8::5/128");
        assert_eq!(cidrs(&["::ffff:192.0.2.0/120"]).to_stored(), "192.0.2.0/24");
    }

    #[test]
    fn an_unrestricted_token_allows_any_client_and_a_restricted_one_only_its_networks() {
        assert!(AllowedCidrs::none().allows(None));
        let restricted = cidrs(&["10.0.0.0/8", "2001:db8::/32"]);
        assert!(restricted.allows(ip("10.200.0.1")));
        assert!(restricted.allows(ip("2001:db8:1::1")));
        assert!(restricted.allows(ip("::ffff:10.0.0.1")));
        assert!(!restricted.allows(ip("11.0.0.1")));
        assert!(!restricted.allows(ip("2001:db9::1")));
        assert!(!restricted.allows(None), "no client address, no access");
    }

    #[test]
    fn bad_entries_are_reported_by_index_and_too_many_at_once() {
        let errors =
            AllowedCidrs::parse(["10.0.0.0/8", "10.0.0.0/33", "host", ""].into_iter()).unwrap_err();
        let indexes: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [1, 2, 3]);
        let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
        assert!(AllowedCidrs::parse(many.iter().map(String::as_str)).is_err());
        assert!(AllowedCidrs::parse(many[..32].iter().map(String::as_str)).is_ok());
    }

    #[test]
    fn client_addresses_are_ip_text_only() {
        for bad in [
            "",
            "10.0.0.0/8",
            "localhost",
            "1.2.3",
            "10.0.0.1:443",
            " 10.0.0.1",
        ] {
            assert!(parse_client_ip(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
    }
}
