//! A real S3-compatible server for the store tests: `moto` in server mode
//! (installed from PyPI by `.ci/run`), started on a free port with one
//! bucket. A test that asks for it and cannot start it fails: nothing is
//! skipped for want of a server.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server` and a bucket in it.
pub struct S3Server {
    child: Child,
    pub addr: SocketAddr,
    pub bucket: String,
}

impl S3Server {
    /// Starts `moto_server` (falling back to `python3 -m moto.server`) and
    /// creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let port = crate::free_addr().port();
        let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
        let spawn = |program: &str, pre: &[&str]| {
            Command::new(program)
                .args(pre)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        };
        let child = spawn("moto_server", &[])
            .or_else(|_| spawn("python3", &["-m", "moto.server"]))
            .unwrap_or_else(|e| {
                panic!("cannot start moto (pip install 'moto[server]', as .ci/run does): {e}")
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = S3Server {
            child,
            addr,
            bucket: bucket.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // CreateBucket is `PUT /<bucket>`; moto takes it unsigned.
        let created =
            crate::http(addr, "PUT", &format!("/{bucket}"), &[], b"").expect("create the bucket");
        assert_eq!(created.status, 200, "create bucket: {}", created.text());
        server
    }

    /// The store URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The `AWS_*` variables that make `object_store` reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr)),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
