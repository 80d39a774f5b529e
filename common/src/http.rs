//! A minimal blocking HTTP/1.1 client for the layers' internal calls (the
//! speed and serving layers pulling the batch layer's manifest and views) and
//! for tests. One request per connection; no TLS: these calls stay inside the
//! deployment's private network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
/// Blocking: from async tests, call inside `spawn_blocking`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(HttpResponse { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// `GET path`, blocking.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http(addr, "GET", path, &[], b"")
}

/// Resolves a layer's base URL, `http://host:port` (a bare `host:port` is
/// accepted too, and a trailing `/` ignored), to a socket address. Another
/// scheme or a path is an error that says so: the layers talk plain HTTP to
/// each other's root.
pub fn resolve(base: &str) -> std::io::Result<SocketAddr> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let rest = match base.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(format!(
                "`{scheme}://` is not supported: the layers talk plain http:// to each other"
            )))
        }
        None => base,
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.contains('/') {
        return Err(invalid(format!(
            "`{base}` has a path; give the layer's root, http://host:port"
        )));
    }
    host.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cannot resolve {host}"),
        )
    })
}

/// Several base URLs of interchangeable servers (batch instances sharing a
/// store serve the same views): `http://a:7071,http://b:7071`. A request
/// goes to the one that answered last, then to each other in turn.
#[derive(Debug)]
pub struct Bases {
    urls: Vec<String>,
    last: std::sync::atomic::AtomicUsize,
}

impl Bases {
    /// Parses a comma-separated list, each resolved once to check it.
    pub fn parse(list: &str) -> std::io::Result<Self> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no URL given",
            ));
        }
        for url in &urls {
            resolve(url).map_err(|e| std::io::Error::new(e.kind(), format!("`{url}`: {e}")))?;
        }
        Ok(Self {
            urls,
            last: Default::default(),
        })
    }

    /// The URLs, as given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Sends `request` to the server that answered last, then to the others
    /// in turn; the first answer (any status) wins, with its server's URL.
    /// If none answers, the last error, naming every URL tried.
    pub fn request(
        &self,
        request: impl Fn(SocketAddr) -> std::io::Result<HttpResponse>,
    ) -> std::io::Result<(&str, HttpResponse)> {
        use std::sync::atomic::Ordering;
        let first = self.last.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in (0..self.urls.len()).map(|k| (first + k) % self.urls.len()) {
            let url = &self.urls[i];
            match resolve(url).and_then(&request) {
                Ok(response) => {
                    self.last.store(i, Ordering::Relaxed);
                    return Ok((url, response));
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            errors.join("; "),
        ))
    }
}

impl std::fmt::Display for Bases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_fail_over_to_the_next_server_and_remember_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let up = listener.local_addr().expect("addr");
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let bases = Bases::parse(&format!("http://{down}, http://{up}")).expect("parse");
        assert_eq!(bases.urls().len(), 2);
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .expect("write");
            }
        });
        let (url, r) = bases.request(|a| get(a, "/x")).expect("one answers");
        assert_eq!((url, r.status), (format!("http://{up}").as_str(), 200));
        let (url, _) = bases.request(|a| get(a, "/x")).expect("again");
        assert_eq!(
            url,
            format!("http://{up}"),
            "starts with the one that answered"
        );
        server.join().expect("server");
        let err = bases.request(|a| get(a, "/x")).expect_err("none answers");
        assert!(err.to_string().contains(&down.to_string()), "{err}");
        assert!(Bases::parse(" , ").is_err());
        assert!(Bases::parse("http://127.0.0.1:1/path").is_err());
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").expect("parse");
        assert_eq!((r.status, r.text().as_str()), (200, "hi"));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").expect("parse");
        assert_eq!((r.status, r.text().as_str()), (404, "abcde"));
    }

    #[test]
    fn resolves_base_urls() {
        let a = resolve("http://127.0.0.1:7071/").expect("resolves");
        assert_eq!(a, SocketAddr::from(([127, 0, 0, 1], 7071)));
        assert_eq!(resolve("127.0.0.1:7071").expect("bare host:port"), a);
        assert!(resolve("no-port").is_err());
        let https = resolve("https://127.0.0.1:7071").expect_err("https");
        assert!(https.to_string().contains("not supported"), "{https}");
        let path = resolve("http://127.0.0.1:7071/views").expect_err("a path");
        assert!(path.to_string().contains("has a path"), "{path}");
    }
}
