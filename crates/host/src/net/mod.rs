//! Egress by permission: what an execution or session may reach, and the
//! proxy that holds it to that.
//!
//! A VM has no network device. An execution allowed the network gets, on
//! the guest's loopback, an HTTP proxy whose every connection the agent
//! carries over a virtio-serial port to [`proxy`] on the host (see
//! [`runner_protocol::net`]). Why not a network device (QEMU user
//! networking, or a tap in a namespace): nothing here speaks IP with the
//! guest, so there is no address, route, DNS or packet of the guest's to
//! filter or to get wrong; a guest can reach exactly what the proxy
//! connects it to, and the proxy decides on the host name a program asked
//! for, never on an address the guest gives. What it costs: only programs
//! that honour `http_proxy`/`https_proxy` reach the network (pip, npm,
//! curl, requests, urllib, Go's and Node's fetch do), and a connection to
//! an address fails as on a machine without a route.
//!
//! The rules: the server's `network.allow` (domain patterns) is all any
//! request may have; a request names the patterns it wants
//! (`network.allow`), each within the server's, and gets those. A name is
//! resolved on the host; addresses in private, loopback, link-local (the
//! cloud metadata address), multicast or reserved ranges are never
//! connected to (unless the operator's `network.allow_private_addresses`,
//! for tests, says otherwise), so a name an attacker controls cannot point
//! the proxy at the host's own network. Bytes and connections are limited
//! per execution, and the result lists each connection.

pub mod proxy;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use proxy::Proxy;

/// The server's network settings (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Domain patterns a request may ask to reach: `example.com`,
    /// `*.example.com` (its subdomains), or `*` (any name). Empty: no
    /// request gets the network.
    pub allow: Vec<String>,
    /// Bytes (both ways) an execution may move through the proxy.
    pub max_bytes: u64,
    /// Connections an execution may make through the proxy.
    pub max_connections: u32,
    /// Names answered here instead of by DNS, `name=address` (an internal
    /// mirror, a test's server).
    pub hosts: Vec<String>,
    /// Connect to private, loopback and link-local addresses too. For
    /// tests only: it lets a program reach this machine's own network.
    pub allow_private_addresses: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_bytes: 256 << 20,
            max_connections: 256,
            hosts: Vec::new(),
            allow_private_addresses: false,
        }
    }
}

impl NetworkConfig {
    /// Checks the settings; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for pattern in &self.allow {
            check_pattern(pattern).map_err(|e| format!("network.allow: {e}"))?;
        }
        self.static_hosts().map(|_| ())
    }

    /// `hosts`, parsed.
    fn static_hosts(&self) -> Result<BTreeMap<String, IpAddr>, String> {
        self.hosts
            .iter()
            .map(|entry| {
                let (name, address) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("network.hosts: {entry:?} is not name=address"))?;
                let name = name.trim().to_ascii_lowercase();
                check_pattern(&name).map_err(|e| format!("network.hosts: {e}"))?;
                let address = address
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("network.hosts: {address:?} is not an IP address"))?;
                Ok((name, address))
            })
            .collect()
    }

    /// What a request asking for `allow` may reach; the error says which
    /// pattern is bad or not allowed here.
    pub fn grant(&self, request: &NetworkRequest) -> Result<Egress, String> {
        if self.allow.is_empty() {
            return Err(
                "this server gives no execution the network (its network.allow is empty)".into(),
            );
        }
        if request.allow.is_empty() {
            return Err("network.allow is empty: name the domains the program may reach".into());
        }
        if request.allow.len() > MAX_PATTERNS {
            return Err(format!(
                "network.allow names at most {MAX_PATTERNS} patterns"
            ));
        }
        let mut allow = Vec::with_capacity(request.allow.len());
        for pattern in &request.allow {
            let pattern = pattern.to_ascii_lowercase();
            check_pattern(&pattern).map_err(|e| format!("network.allow: {e}"))?;
            if !self.allow.iter().any(|server| covers(server, &pattern)) {
                return Err(format!(
                    "network.allow: {pattern} is not allowed here; this server allows {}",
                    self.allow.join(", ")
                ));
            }
            allow.push(pattern);
        }
        Ok(Egress {
            allow,
            max_bytes: self.max_bytes,
            max_connections: self.max_connections,
            hosts: self.static_hosts()?,
            allow_private_addresses: self.allow_private_addresses,
        })
    }
}

/// Most patterns a request may name.
const MAX_PATTERNS: usize = 100;

/// What a request asks of the network: domain patterns, each within the
/// server's `network.allow`.
pub use runner_wire::NetworkRequest;

/// What one execution or session may reach: granted by
/// [`NetworkConfig::grant`], held to by the [`Proxy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    allow: Vec<String>,
    max_bytes: u64,
    max_connections: u32,
    hosts: BTreeMap<String, IpAddr>,
    allow_private_addresses: bool,
}

impl Egress {
    /// Whether `host` (a name, lowercase) may be reached.
    pub fn allows(&self, host: &str) -> bool {
        self.allow.iter().any(|pattern| matches(pattern, host))
    }

    /// The environment that points a program at the proxy.
    pub fn env() -> impl Iterator<Item = (String, String)> {
        let proxy = format!("http://127.0.0.1:{}", runner_protocol::net::PROXY_PORT);
        let local = "localhost,127.0.0.1,::1".to_string();
        [
            ("http_proxy", proxy.clone()),
            ("https_proxy", proxy.clone()),
            ("HTTP_PROXY", proxy.clone()),
            ("HTTPS_PROXY", proxy),
            ("no_proxy", local.clone()),
            ("NO_PROXY", local),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
    }
}

/// Checks a domain pattern: a name (letters, digits and hyphens in dot-
/// separated labels, not all digits at the end: no address), `*.` and a
/// name, or `*`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    check_name(name).map_err(|why| format!("{pattern:?} is not a domain name or *.domain: {why}"))
}

/// Checks a host name; the error says why it is none.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("a name has 1 to 253 characters");
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("it is an address; name the host");
    }
    let mut labels = 0;
    for label in name.split('.') {
        labels += 1;
        if label.is_empty() || label.len() > 63 {
            return Err("each label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("labels hold lowercase letters, digits and hyphens only");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label neither starts nor ends with a hyphen");
        }
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    if labels > 1 && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("its last label is all digits, as an address's");
    }
    Ok(())
}

/// Whether `pattern` matches host `name`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        _ if pattern == "*" => true,
        Some(domain) => name
            .strip_suffix(domain)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

/// Whether server pattern `server` allows all request pattern `request`
/// does.
fn covers(server: &str, request: &str) -> bool {
    match request.strip_prefix("*.") {
        _ if request == "*" => server == "*",
        Some(domain) => server == request || matches(server, domain) && server != domain,
        None => matches(server, request),
    }
}

/// Whether the proxy may connect to `address` for anybody: not this
/// machine's, its network's, or anything but the public internet.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64
                || v6 == Ipv6Addr::from([0u8; 16]))
        }
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local() // 169.254/16: the metadata address
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || v4.is_unspecified()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64) // shared address space
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || a >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(allow: &[&str]) -> NetworkConfig {
        NetworkConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..NetworkConfig::default()
        }
    }

    fn request(allow: &[&str]) -> NetworkRequest {
        NetworkRequest {
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn patterns_are_names_or_wildcards_of_names() {
        for good in [
            "example.com",
            "*.example.com",
            "*",
            "localhost",
            "a-b.c9.io",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "::1",
            "1.2.3.4.5",
            "*.*.com",
            "a*.com",
            "Example.com",
            "-a.com",
            "a..com",
            "http://a.com",
            "a.com:80",
            "a.com/",
            "*.",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "b.a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "badexample.com"));
        assert!(matches("example.com", "example.com"));
        assert!(!matches("example.com", "a.example.com"));
        assert!(matches("*", "anything.at.all"));
    }

    #[test]
    fn a_request_can_only_narrow_what_the_server_allows() {
        let config = server(&["*.example.com", "pypi.test"]);
        for within in [
            &["a.example.com"][..],
            &["*.example.com"],
            &["*.a.example.com", "pypi.test"],
        ] {
            let egress = config.grant(&request(within)).unwrap();
            assert!(egress.allows(&within[0].replace("*.", "x.")));
        }
        for (beyond, named) in [
            (&["example.com"][..], "example.com"),
            (&["*"], "*"),
            (&["*.test"], "*.test"),
            (&["other.test"], "other.test"),
        ] {
            let error = config.grant(&request(beyond)).unwrap_err();
            assert!(
                error.contains(named) && error.contains("not allowed here"),
                "{error}"
            );
        }
        let error = config.grant(&request(&["10.1.2.3"])).unwrap_err();
        assert!(error.contains("not a domain name"), "{error}");
        let error = config.grant(&request(&[])).unwrap_err();
        assert!(error.contains("empty"), "{error}");
        let error = server(&[]).grant(&request(&["a.test"])).unwrap_err();
        assert!(error.contains("gives no execution the network"), "{error}");
        let any = server(&["*"]).grant(&request(&["*"])).unwrap();
        assert!(any.allows("whatever.example"));
    }

    #[test]
    fn only_public_addresses_are_connected_to() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn static_hosts_are_checked() {
        let mut config = server(&["pkgs.test"]);
        config.hosts = vec!["pkgs.test=127.0.0.1".into()];
        assert_eq!(config.check(), Ok(()));
        config.hosts = vec!["pkgs.test".into()];
        assert!(config.check().unwrap_err().contains("name=address"));
        config.hosts = vec!["pkgs.test=nowhere".into()];
        assert!(config.check().unwrap_err().contains("not an IP address"));
        config.allow = vec!["1.2.3.4".into()];
        assert!(config.check().unwrap_err().contains("network.allow"));
    }
}
