//! `[server] offline = true`: an air-gapped deployment refuses, at startup, any upstream
//! that is not on a local address, so that a config mistake cannot send data off site.

use std::net::{IpAddr, ToSocketAddrs};

use bulwark_config::Config;

/// Whether `ip` is on this machine or the site's own network: loopback, RFC 1918
/// private, link-local, or IPv6 unique-local (and IPv4-mapped forms of these).
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Every upstream base URL that is not on a local address, with why; empty when the
/// config may run offline. Host names are resolved (a name that does not resolve, or
/// resolves to anything not local, is refused).
pub fn problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for u in &config.upstreams {
        for base in std::iter::once(&u.base_url).chain(&u.replicas) {
            if let Some(why) = not_local(base) {
                out.push(format!("upstream `{}` at {base}: {why}", u.name));
            }
        }
    }
    out
}

fn not_local(base: &str) -> Option<String> {
    let uri = match base.parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => return Some(format!("not a URL ({e})")),
    };
    let Some(host) = uri.host() else {
        return Some("no host".into());
    };
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match (host, port).to_socket_addrs() {
            Ok(a) => a.map(|s| s.ip()).collect(),
            Err(e) => return Some(format!("`{host}` does not resolve ({e})")),
        },
    };
    match addrs.iter().find(|ip| !is_local(**ip)) {
        Some(ip) => Some(format!("{ip} is not a local address")),
        None if addrs.is_empty() => Some("resolves to no address".into()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_loopback_private_link_local_and_unique_local() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "169.254.3.4",
            "::1",
            "fd12::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "203.0.113.5",
            "100.64.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "0.0.0.0",
        ] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_judged_by_their_host() {
        assert_eq!(not_local("http://127.0.0.1:8000/v1"), None);
        assert_eq!(not_local("http://[fd00::5]:8000/v1"), None);
        assert_eq!(not_local("http://localhost:11434/v1"), None);
        assert!(not_local("https://203.0.113.5/v1").is_some_and(|w| w.contains("not a local")));
        assert!(not_local("no url").is_some());
    }
}
