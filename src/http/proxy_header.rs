//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a
//! load balancer puts before the first byte of a connection to say whom
//! it came from. Parsed from the connection's first bytes, sans-IO.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes that open a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// Why the first bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadHeader(pub &'static str);

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are
/// needed; otherwise the client's address (`None` for a LOCAL or UNKNOWN
/// header: use the socket's peer) and the header's length.
pub fn parse(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, BadHeader> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(BadHeader("no PROXY header"));
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, BadHeader> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(BadHeader("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    let line = buf[..end]
        .strip_suffix(b"\r")
        .ok_or(BadHeader("v1 line not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| BadHeader("v1 line not ASCII"))?;
    let mut parts = line.split(' ');
    parts.next(); // PROXY
    let family = parts.next().ok_or(BadHeader("v1 family missing"))?;
    if family == "UNKNOWN" {
        return Ok(Some((None, end + 1)));
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(BadHeader("v1 needs 4 fields"));
    };
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| BadHeader("v1 bad IPv4 address"))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| BadHeader("v1 bad IPv6 address"))?,
        _ => return Err(BadHeader("v1 unknown family")),
    };
    let port = sport
        .parse::<u16>()
        .ok()
        .filter(|_| !sport.starts_with('0') || sport == "0")
        .ok_or(BadHeader("v1 bad port"))?;
    Ok(Some((Some(SocketAddr::new(ip, port)), end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, BadHeader> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(BadHeader("v2 bad version"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (health checks).
        0 => return Ok(Some((None, total))),
        1 => {}
        _ => return Err(BadHeader("v2 bad command")),
    }
    let addr = match family >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        1 | 2 => return Err(BadHeader("v2 address block too short")),
        // AF_UNSPEC or AF_UNIX: no IP to use.
        _ => None,
    };
    Ok(Some((addr, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[0x20 | cmd, family]);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let addr = "192.0.2.7:51234".parse().unwrap();
        assert_eq!(parse(h), Ok(Some((Some(addr), 44))));
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 443 8080\r\n";
        assert_eq!(
            parse(h),
            Ok(Some((Some("[2001:db8::1]:443".parse().unwrap()), h.len())))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((None, 15))));
        for partial in [&b"PRO"[..], b"PROXY TCP4 192.0.2.7"] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n",
            b"PROXY TCP4 300.0.2.7 198.51.100.1 1 80\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 1 80\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 80\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 80\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20)).is_err());
    }

    #[test]
    fn version_2() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&80u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, skipped
        let h = v2(1, 0x11, &body);
        let addr = "192.0.2.7:51234".parse().unwrap();
        assert_eq!(parse(&h), Ok(Some((Some(addr), h.len()))));
        for cut in 1..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((None, 16))), "LOCAL");
        let mut body6 = [0u8; 36];
        body6[15] = 1;
        body6[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &body6)),
            Ok(Some((Some("[::1]:443".parse().unwrap()), 52)))
        );
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err(), "short block");
        assert!(parse(&v2(5, 0x11, &body)).is_err(), "bad command");
        let mut old = v2(1, 0x11, &body);
        old[12] = 0x11;
        assert!(parse(&old).is_err(), "version 1 bits in a v2 header");
    }
}
