//! Who the client is and which request this is: the client address (socket peer, or from
//! `X-Forwarded-For` only when the peer is a trusted proxy) and the request id. Pure.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address. When the peer is a trusted proxy, `X-Forwarded-For` is walked from
/// the right (the hop nearest to us) past every trusted address; the first untrusted one is
/// the client, as nginx's `real_ip_recursive on` does. Entries to its left were written by
/// the client itself and are never believed. A peer that is not trusted is the client, and
/// its `X-Forwarded-For` is ignored.
pub fn client_ip(peer: IpAddr, xff: &[&[u8]], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For headers are one comma-separated list, in order.
    let joined: Vec<&[u8]> = xff.iter().flat_map(|h| h.split(|&b| b == b',')).collect();
    for entry in joined.iter().rev() {
        let s = String::from_utf8_lossy(entry);
        let Some(ip) = parse_forwarded_addr(s.trim()) else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

/// A client-supplied `x-request-id` is kept when it is 1-128 characters of `[A-Za-z0-9._:-]`
/// (safe to log and to echo); otherwise a new one is generated.
pub fn request_id(supplied: Option<&[u8]>) -> String {
    if let Some(v) = supplied {
        if !v.is_empty()
            && v.len() <= 128
            && v.iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return String::from_utf8_lossy(v).into_owned();
        }
    }
    new_request_id()
}

/// 128 random bits as 32 hex digits.
pub fn new_request_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn xff_is_ignored_from_untrusted_peers() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &[b"1.2.3.4"], &nets(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn xff_walks_right_to_left_past_trusted_hops() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let t = nets(&["10.0.0.0/8", "192.168.0.0/16"]);
        // The client claims 6.6.6.6; the first untrusted hop seen by our proxies is 198.51.100.7.
        let got = client_ip(peer, &[b"6.6.6.6, 198.51.100.7", b"192.168.1.1"], &t);
        assert_eq!(got, "198.51.100.7".parse::<IpAddr>().unwrap());
        let got = client_ip(peer, &[b"[2001:db8::5]:443"], &t);
        assert_eq!(got, "2001:db8::5".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last trusted address.
        let got = client_ip(peer, &[b"bogus, 10.1.1.1"], &t);
        assert_eq!(got, "10.1.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        assert_eq!(request_id(Some(b"abc-123")), "abc-123");
        let fresh = request_id(Some(b"bad id\"\n"));
        assert_eq!(fresh.len(), 32);
        assert_ne!(request_id(None), request_id(None));
    }
}
