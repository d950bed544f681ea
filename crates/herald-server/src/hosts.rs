//! The `Host` check (DNS-rebinding defence): a page on an attacker's name that
//! resolves to herald's address must get nothing from it, so a request whose
//! `Host` is none of herald's own names is refused with 421 before anything
//! else looks at it.
//!
//! Allowed: the public origin's host (with its port), the address herald
//! listens on (and, when that is a wildcard address, the loopback names on
//! that port), and every `--allowed-host` (`name` for any port, or
//! `name:port`). A request without `Host` comes from no browser (browsers
//! always send one) and passes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The names herald answers to.
#[derive(Debug, Default)]
pub struct AllowedHosts {
    inner: RwLock<Lists>,
}

#[derive(Debug, Default)]
struct Lists {
    /// `host:port`, exactly.
    authorities: Vec<String>,
    /// Host names allowed on any port.
    any_port: Vec<String>,
}

/// Lowercase, and the fully qualified `localhost.` is `localhost`.
fn normalize(authority: &str) -> String {
    let authority = authority.trim().to_ascii_lowercase();
    let (host, port) = split(&authority);
    let host = host.strip_suffix('.').unwrap_or(host);
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into the host and the port.
fn split(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (
                &authority[..h.len() + 2],
                tail.strip_prefix(':').filter(|p| !p.is_empty()),
            ),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}

fn authority_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

impl AllowedHosts {
    /// The public origin's host and the `--allowed-host` values.
    pub fn new(public_origin: &str, extra: &[String]) -> AllowedHosts {
        let hosts = AllowedHosts::default();
        if let Ok(url) = url::Url::parse(public_origin)
            && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
        {
            let host = normalize(host);
            hosts.add_authority(format!("{host}:{port}"));
            if url.port().is_none() {
                // The default port: browsers send the bare name.
                hosts.add_authority(host);
            }
        }
        for value in extra {
            let value = normalize(value);
            match split(&value) {
                (host, Some(_)) if !host.is_empty() => hosts.add_authority(value.clone()),
                (host, _) if !host.is_empty() => {
                    let mut lists = hosts.write();
                    lists.any_port.push(host.to_owned());
                }
                _ => {}
            }
        }
        hosts
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Lists> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn add_authority(&self, authority: String) {
        let mut lists = self.write();
        if !lists.authorities.contains(&authority) {
            lists.authorities.push(authority);
        }
    }

    /// The address herald listens on (known once it is bound).
    pub fn add_listen_addr(&self, addr: SocketAddr) {
        if addr.ip().is_unspecified() {
            let port = addr.port();
            for name in [
                format!("localhost:{port}"),
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
            ] {
                self.add_authority(name);
            }
        }
        self.add_authority(authority_of(addr));
    }

    /// Whether a request with this `Host` header value is for herald.
    pub fn allows(&self, host: &str) -> bool {
        let lists = self.inner.read().unwrap_or_else(|p| p.into_inner());
        // The common case, without allocating: exactly one of the names.
        if lists.authorities.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return true;
        }
        let host = normalize(host);
        if lists.authorities.contains(&host) {
            return true;
        }
        let (name, _) = split(&host);
        lists.any_port.iter().any(|h| h == name)
    }

    /// `Ok` when the request may go on; 421 otherwise.
    pub fn check(&self, host: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(host) = host else {
            return Ok(());
        };
        match std::str::from_utf8(host) {
            Ok(h) if self.allows(h) => Ok(()),
            _ => Err(ApiError::MisdirectedRequest(format!(
                "this herald does not answer to the host {:?}; use one of its own names, or start it \
                 with --allowed-host NAME (or set --public-origin) to add one",
                String::from_utf8_lossy(host)
            ))),
        }
    }
}

/// Middleware: 421 for a request to a name that is not herald's. Its state is
/// the list alone (one reference count per request, not the whole `AppState`).
pub async fn check_host(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
    // An absolute-form target (`GET http://name/…`) names the host too.
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    match hosts.check(host) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// An address or a network (`10.0.0.7`, `10.0.0.0/8`, `fd00::/8`) of a reverse
/// proxy whose `X-Forwarded-For` is believed (`--trusted-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(ipnet::IpNet);

impl TrustedProxy {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let net = match s.parse::<std::net::IpAddr>() {
            // An IPv4-mapped IPv6 address is the IPv4 address it maps.
            Ok(ip) => ipnet::IpNet::from(ip.to_canonical()),
            Err(_) => s
                .parse::<ipnet::IpNet>()
                .map_err(|e| format!("{s:?} is not an IP address or network ({e}; e.g. 10.0.0.7 or 10.0.0.0/8)"))?,
        };
        Ok(TrustedProxy(net))
    }
}

impl std::fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_origin_the_listen_address_and_allowed_hosts_pass_others_do_not() {
        let hosts = AllowedHosts::new(
            "http://localhost:8080",
            &["herald.internal".into(), "ops.example.com:9000".into()],
        );
        hosts.add_listen_addr("127.0.0.1:8080".parse().unwrap());
        for ok in [
            "localhost:8080",
            "LOCALHOST:8080",
            "localhost.:8080",
            "127.0.0.1:8080",
            "herald.internal",
            "herald.internal:1234",
            "ops.example.com:9000",
        ] {
            assert!(hosts.allows(ok), "{ok} must pass");
        }
        for bad in [
            "evil.example:8080",
            "localhost:9999",
            "localhost",
            "127.0.0.1:80",
            "ops.example.com:9001",
            "ops.example.com",
            "herald.internal.evil.example",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad} must be refused");
        }
    }

    #[test]
    fn default_ports_wildcard_listeners_and_ipv6() {
        let hosts = AllowedHosts::new("https://herald.example.com", &[]);
        assert!(hosts.allows("herald.example.com"));
        assert!(hosts.allows("herald.example.com:443"));
        assert!(!hosts.allows("herald.example.com:8443"));
        hosts.add_listen_addr("0.0.0.0:8080".parse().unwrap());
        assert!(hosts.allows("127.0.0.1:8080"));
        assert!(hosts.allows("localhost:8080"));
        assert!(hosts.allows("[::1]:8080"));
        assert!(
            !hosts.allows("192.0.2.7:8080"),
            "a wildcard address is not every address"
        );
        let v6 = AllowedHosts::new("http://localhost:8080", &["[fd00::1]".into()]);
        v6.add_listen_addr("[::1]:7000".parse().unwrap());
        assert!(v6.allows("[::1]:7000"));
        assert!(v6.allows("[fd00::1]:1"));
        assert!(!v6.allows("[::2]:7000"));
    }

    #[test]
    fn no_host_passes_and_a_foreign_one_is_a_421() {
        let hosts = AllowedHosts::new("http://localhost:8080", &[]);
        assert!(hosts.check(None).is_ok());
        assert!(matches!(
            hosts.check(Some(b"rebind.evil.example:8080")),
            Err(ApiError::MisdirectedRequest(_))
        ));
        assert!(hosts.check(Some(b"\xff")).is_err());
    }
}
