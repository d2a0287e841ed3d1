//! Checks on the listen addresses before pingora binds them.
//!
//! Pingora binds each service's listener on that service's own runtime and, when the address is
//! taken, retries for 30 s and then panics in that runtime only: the process keeps running with
//! its other listeners. A proxy whose S3 port is held by someone else (or by its own admin API)
//! would report ready on `/readyz` while S3 clients reach a different server. So the addresses
//! are checked here, and a start that cannot have every listener fails with one clear line.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::time::Duration;

/// How long a start waits for an address that is still in use (a previous process exiting).
const IN_USE_TRIES: u32 = 10;
const IN_USE_STEP: Duration = Duration::from_millis(500);

fn resolve(setting: &str, addr: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| format!("{setting}: {addr:?}: {e}"))?.collect();
    if addrs.is_empty() {
        return Err(format!("{setting}: {addr:?} resolves to no address"));
    }
    Ok(addrs)
}

/// Two listen addresses that one socket each could not both have (same port, and the same IP
/// or one of them the wildcard of the same family).
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && a.is_ipv4() == b.is_ipv4() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Each (setting, address) pair names a distinct socket: no two of them clash.
pub fn check_distinct(listeners: &[(&str, &str)]) -> Result<(), String> {
    for (i, (sa, a)) in listeners.iter().enumerate() {
        for (sb, b) in &listeners[i + 1..] {
            let (ra, rb) = (resolve(sa, a)?, resolve(sb, b)?);
            if ra.iter().any(|x| rb.iter().any(|y| clash(x, y))) {
                return Err(format!("{sa} ({a}) and {sb} ({b}) are the same socket: give each its own port"));
            }
        }
    }
    Ok(())
}

/// Every address can be listened on now (waiting up to 5 s for one still in use). Not for a
/// graceful upgrade, where the running process holds the sockets and hands them over.
pub fn check_free(listeners: &[(&str, &str)]) -> Result<(), String> {
    for (setting, addr) in listeners {
        let target = resolve(setting, addr)?[0];
        let mut tries = 0;
        loop {
            // std sets SO_REUSEADDR, as pingora does, so a port in TIME_WAIT passes.
            match TcpListener::bind(target) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::AddrInUse && tries + 1 < IN_USE_TRIES => {
                    tries += 1;
                    std::thread::sleep(IN_USE_STEP);
                }
                Err(e) => return Err(format!("{setting}: cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_port_twice_is_refused_wildcards_included() {
        let err = check_distinct(&[("listen_addr", "127.0.0.1:8080"), ("admin_listen_addr", "127.0.0.1:8080")]).unwrap_err();
        assert!(err.contains("listen_addr (127.0.0.1:8080) and admin_listen_addr (127.0.0.1:8080)"), "{err}");
        assert!(check_distinct(&[("listen_addr", "0.0.0.0:8080"), ("admin_listen_addr", "127.0.0.1:8080")]).is_err());
        assert!(check_distinct(&[("listen_addr", "[::]:8080"), ("admin_listen_addr", "[::1]:8080")]).is_err());
        assert!(check_distinct(&[("listen_addr", "0.0.0.0:8080"), ("admin_listen_addr", "127.0.0.1:9090")]).is_ok());
        assert!(check_distinct(&[("listen_addr", "127.0.0.1:8080"), ("admin_listen_addr", "127.0.0.2:8080")]).is_ok());
        assert!(check_distinct(&[("listen_addr", "localhost:8080"), ("admin_listen_addr", "127.0.0.1:8080")]).is_err());
        assert!(check_distinct(&[("listen_addr", "nonsense")]).is_ok(), "one address alone is not resolved");
        assert!(check_distinct(&[("listen_addr", "nonsense"), ("admin_listen_addr", "127.0.0.1:1")]).unwrap_err().starts_with("listen_addr: "));
    }

    #[test]
    fn a_port_held_by_another_listener_fails_with_the_setting_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let err = check_free(&[("admin_listen_addr", &addr)]).unwrap_err();
        assert!(err.starts_with(&format!("admin_listen_addr: cannot listen on {addr}: ")), "{err}");
        assert!(started.elapsed() >= IN_USE_STEP * (IN_USE_TRIES - 1), "waited for the holder to go");
        drop(held);
        check_free(&[("admin_listen_addr", &addr)]).unwrap();
    }
}
