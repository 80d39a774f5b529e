//! Brokers behind something on the wire: a proxy that damages marked
//! records (to make a batch unreadable), and a TLS terminator (tansu 0.6
//! builds no TLS listener of its own), each advertised by the broker so that
//! every client connection goes through it.

use common::broker::{BrokerOptions, BrokerStorage, EmbeddedBroker};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes that [`broker_behind_corrupting_proxy`] damages wherever the
/// broker sends them: put them in a record to make its batch unreadable.
pub const CORRUPT_MARKER: &[u8] = b"poisonmarker";

/// Flips the case of the last byte of every [`CORRUPT_MARKER`] in `bytes`;
/// returns how many it damaged.
pub fn corrupt_markers(bytes: &mut [u8]) -> usize {
    let mut hits = 0;
    let mut i = 0;
    while i + CORRUPT_MARKER.len() <= bytes.len() {
        if &bytes[i..i + CORRUPT_MARKER.len()] == CORRUPT_MARKER {
            bytes[i + CORRUPT_MARKER.len() - 1] ^= 0x20;
            hits += 1;
            i += CORRUPT_MARKER.len();
        } else {
            i += 1;
        }
    }
    hits
}

/// Starts a broker on a free port that advertises a listener of this
/// process instead, and hands each connection to that listener, with one to
/// the broker, to `relay`. Returns the broker and the bootstrap address.
async fn broker_behind<F, R>(
    storage: BrokerStorage,
    mut options: BrokerOptions,
    relay: F,
) -> (EmbeddedBroker, String)
where
    F: Fn(TcpStream, TcpStream) -> R + Send + 'static,
    R: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
    let front = listener.local_addr().expect("proxy address");
    let upstream = crate::free_addr();
    options.addr = Some(upstream);
    options.advertised = Some(front);
    let broker = EmbeddedBroker::start_with(storage, options)
        .await
        .expect("broker starts");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if let Ok(server) = TcpStream::connect(upstream).await {
                tokio::spawn(relay(client, server));
            }
        }
    });
    (broker, front.to_string())
}

/// An in-memory broker that clients reach through a proxy which damages
/// [`CORRUPT_MARKER`] in everything the broker sends: a record holding the
/// marker arrives in a batch whose CRC no longer matches, which is what a
/// corrupt or foreign batch looks like to a consumer. A marker split across
/// two reads passes unharmed; keep the records small.
pub async fn broker_behind_corrupting_proxy() -> (EmbeddedBroker, String) {
    let relay = |client: TcpStream, server: TcpStream| async move {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            corrupt_markers(&mut buf[..n]);
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    broker_behind(BrokerStorage::Memory, BrokerOptions::default(), relay).await
}

/// A private CA, a server certificate for `127.0.0.1` and a client
/// certificate (CN `lambda`), all PEM, made with the `openssl` command.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Writes the certificates and keys into `dir`.
    pub fn create(dir: &Path) -> Self {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (Debian package `openssl`; .ci/run installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        ca.extend(["-subj", "/CN=lambda-test-ca"]);
        openssl(&ca);
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "lambda", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
            let (key, csr, pem, ext, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
                format!("/CN={cn}"),
            );
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&req);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// A rustls server configuration with the server certificate, requiring
    /// clients to present a certificate signed by the CA when
    /// `require_client_cert`.
    fn server_config(&self, require_client_cert: bool) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server_cert)
            .and_then(|certs| certs.collect())
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&self.server_key).expect("server key");
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(&self.ca).expect("CA file") {
                roots.add(ca.expect("CA certificate")).expect("a usable CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder
            .with_single_cert(chain, key)
            .expect("certificate and key match")
    }
}

/// A broker that clients reach only over TLS, with `certs`' server
/// certificate (and, when `require_client_cert`, only with a client
/// certificate the CA signed). `options` may add SASL users, for
/// `sasl_ssl`.
pub async fn broker_behind_tls(
    storage: BrokerStorage,
    options: BrokerOptions,
    certs: &TestCertificates,
    require_client_cert: bool,
) -> (EmbeddedBroker, String) {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config(require_client_cert)));
    let relay = move |client: TcpStream, mut server: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            // A failed handshake (no certificate, an untrusted one, a
            // plaintext client) just closes the connection, as a TLS
            // listener does.
            if let Ok(mut tls) = acceptor.accept(client).await {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
            }
        }
    };
    broker_behind(storage, options, relay).await
}

/// A broker on SQLite storage in `dir` that clients reach only over TLS
/// (with a client certificate when `require_client_cert`) and that requires
/// SASL/SCRAM as `user` with `password`: what a managed cluster asks of a
/// client. Returns the broker, its bootstrap address and the certificates
/// (made in `dir`) a client needs.
pub async fn secured_broker(
    dir: &Path,
    user: &str,
    password: &str,
    require_client_cert: bool,
) -> (EmbeddedBroker, String, TestCertificates) {
    let certs = TestCertificates::create(dir);
    let options = BrokerOptions {
        scram_users: vec![(user.to_owned(), password.to_owned())],
        ..BrokerOptions::default()
    };
    let storage = BrokerStorage::Sqlite(dir.join("broker.db"));
    let (broker, brokers) = broker_behind_tls(storage, options, &certs, require_client_cert).await;
    (broker, brokers, certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_damages_only_the_marker() {
        let mut bytes = b"xx poisonmarker yy poisonmarker".to_vec();
        assert_eq!(corrupt_markers(&mut bytes), 2);
        assert_eq!(&bytes, b"xx poisonmarkeR yy poisonmarkeR");
        let mut clean = b"alpha beta".to_vec();
        assert_eq!(corrupt_markers(&mut clean), 0);
    }
}
