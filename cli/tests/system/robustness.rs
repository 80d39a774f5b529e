//! HTTP robustness of a running `lambda serve`: abusive requests get clean
//! 4xx/503 answers, slow connections are cut, and the server stays up; and a
//! schemathesis fuzz run from its own OpenAPI document.

use crate::stack::{json, Options, Role, Stack, TOKEN};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends raw bytes and returns the status code of the answer, or `None` if
/// the server closed the connection without one.
fn raw_status(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The server may answer and close before reading everything (413): a
    // failed write is fine, the answer is what counts.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

fn assert_clean(what: &str, status: Option<u16>) {
    let s = status.unwrap_or_else(|| panic!("{what}: connection closed without an answer"));
    assert!(
        (400..500).contains(&s) || s == 503,
        "{what}: answered {s}, want a 4xx or 503"
    );
    eprintln!("{what}: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_requests_get_clean_answers_and_the_server_stays_up() {
    let s = Stack::start("sys-abuse", Options::default()).await;
    let addr = s.addr(Role::Serve);
    let logs = tokio::task::spawn_blocking(move || {
        // A declared 1 GiB body, with 1 MiB of it actually sent.
        let mut huge = format!(
            "POST /v1/admin/recompute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
            1u64 << 30
        )
        .into_bytes();
        huge.extend(std::iter::repeat_n(b'a', 1 << 20));
        assert_eq!(raw_status(addr, &huge), Some(413), "huge declared body");

        // A chunked body of 2 MiB without a declared length.
        let mut chunked = b"POST /v1/admin/recompute HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..32 {
            chunked.extend(format!("{:x}\r\n", 64 << 10).as_bytes());
            chunked.extend(std::iter::repeat_n(b'b', 64 << 10));
            chunked.extend(b"\r\n");
        }
        chunked.extend(b"0\r\n\r\n");
        assert_clean("chunked 2 MiB body without a token", raw_status(addr, &chunked));

        // Long paths: over the 8 KiB target limit, and over hyper's buffer.
        for len in [9 << 10, 100 << 10, 1 << 20] {
            let req = format!("GET /v1/words/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(len));
            assert_clean(&format!("path of {len} bytes"), raw_status(addr, req.as_bytes()));
        }
        // Invalid UTF-8 in the path, percent-encoded and raw.
        for path in [b"/v1/words/%FF%FE".as_slice(), b"/v1/words/\xff\xfe", b"/v1/\xc3(x"] {
            let req = [b"GET ".as_slice(), path, b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
            assert_clean(&format!("path {}", String::from_utf8_lossy(path)), raw_status(addr, &req));
        }
        // Garbage instead of HTTP, a header line without a colon, an unknown method.
        for req in [
            b"\x00\x01\x02 garbage\r\n\r\n".as_slice(),
            b"GET /v1/top HTTP/1.1\r\nthis is not a header\r\n\r\n",
            b"BREW /v1/top HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_clean(&format!("request {:?}", String::from_utf8_lossy(req)), raw_status(addr, req));
        }

        // 1,000 slowloris connections: each sends part of its headers, then
        // one more header line every second. Meanwhile real requests are answered.
        let slow: Vec<TcpStream> = (0..1000)
            .map(|_| {
                let mut c = TcpStream::connect(addr).expect("slow connect");
                c.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").expect("partial");
                c
            })
            .collect();
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let r = ::testkit::get(addr, "/v1/top?k=5").expect("a request beside 1,000 slow connections");
            assert!(r.status == 200 || r.status == 503, "answered {}", r.status);
            answered += 1;
        }
        eprintln!("{answered} requests answered beside 1,000 slow connections");
        // Dribble headers until the server's header-read timeout cuts them.
        let deadline = Instant::now() + ::common::server::HEADER_READ_TIMEOUT + Duration::from_secs(20);
        let mut open = slow;
        while !open.is_empty() && Instant::now() < deadline {
            open.retain_mut(|c| c.write_all(b"X-Slow: 1\r\n").is_ok() && still_open(c));
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(
            open.is_empty(),
            "{} slow connections still open after the header-read timeout",
            open.len()
        );
        json(addr, "/healthz").expect("the server is still up")
    })
    .await
    .expect("abuse");
    assert_eq!(logs["status"], "ok");
    let m = ::testkit::get(addr, "/metrics").expect("metrics").text();
    assert!(
        ::testkit::metric_sum(&m, "lambda_serving_requests_total") > 0.0,
        "requests are counted"
    );
    s.shutdown();
}

/// Whether the server has not closed the connection (a read would block).
fn still_open(c: &mut TcpStream) -> bool {
    c.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 512];
    let open = match c.read(&mut b) {
        Ok(0) => false,
        Ok(_) => false, // an answer (408) also ends it
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    c.set_nonblocking(false).expect("blocking");
    open
}

/// schemathesis (PyPI) drives every operation of `/openapi.json` with
/// generated requests, fixed seed, 1,000 examples per operation; it fails on
/// any 5xx, any answer that does not match the document, or invalid data
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzz_finds_no_server_error_and_no_schema_violation() {
    let s = Stack::start("sys-fuzz", Options::default()).await;
    s.produce((0..200).map(crate::stack::event).collect()).await;
    let addr = s.addr(Role::Serve);
    let examples = if crate::stack::full_profile() {
        "5000"
    } else {
        "1000"
    };
    let har = s.dir.path().join("fuzz.har");
    let har_arg = har.to_str().expect("utf-8").to_owned();
    // Its example cache (.schemathesis/) goes to the scenario's directory,
    // not the source tree.
    let cwd = s.dir.path().to_owned();
    // Invalid data must be rejected with one of schemathesis' client-error
    // statuses, to which we add the two refusals every route makes before
    // its handler (documented on every operation): a request target too
    // long (414; a generated word far over its 600 characters) and a body
    // too large (413).
    let config = cwd.join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks.negative_data_rejection]\n\
         expected-statuses = [\"400\", \"401\", \"403\", \"404\", \"405\", \"406\", \"409\", \
         \"413\", \"414\", \"415\", \"422\", \"428\", \"429\", \"5xx\"]\n",
    )
    .expect("write the schemathesis config");
    let config = config.to_str().expect("utf-8").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("schemathesis")
            .current_dir(&cwd)
            .args([
                "--config-file",
                &config,
                "run",
                &format!("http://{addr}/openapi.json"),
                "--checks",
                "all",
                "--max-examples",
                examples,
                "--seed",
                "20261124",
                "--header",
                &format!("Authorization: Bearer {TOKEN}"),
                "--no-color",
                "--report",
                "har",
                "--report-har-path",
                &har_arg,
            ])
            .output()
            .expect("schemathesis is installed (pip install -r requirements-test.txt)")
    })
    .await
    .expect("join");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{report}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    // Requests per operation, from the recorded exchanges. Operations with
    // parameters get at least 1,000 distinct examples; the parameterless
    // ones have only a handful of distinct requests, and hypothesis stops
    // when it has tried them all.
    let har: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&har).expect("HAR report")).expect("HAR json");
    let mut per_op: std::collections::BTreeMap<String, usize> = Default::default();
    for e in har["log"]["entries"].as_array().expect("entries") {
        let url = e["request"]["url"].as_str().expect("url");
        let path = url.split_once("://").map_or(url, |(_, r)| r);
        let path = path[path.find('/').unwrap_or(0)..]
            .split('?')
            .next()
            .unwrap_or("");
        let op = if path.starts_with("/v1/words/") {
            "/v1/words/{word}"
        } else {
            path
        };
        let method = e["request"]["method"].as_str().expect("method");
        *per_op.entry(format!("{method} {op}")).or_default() += 1;
    }
    eprintln!("requests per operation: {per_op:?}");
    for op in ["GET /v1/words/{word}", "GET /v1/top"] {
        assert!(
            per_op.get(op).copied().unwrap_or(0) >= 1000,
            "{op}: {per_op:?}"
        );
    }
    for op in [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/status",
        "POST /v1/admin/recompute",
    ] {
        assert!(per_op.contains_key(op), "{op} never exercised: {per_op:?}");
    }
    s.shutdown();
}
