//! An embedded Kafka-compatible broker (tansu), started in-process.
//!
//! The test suites and `lambda demo` use it so that nothing needs an external
//! Kafka: [`EmbeddedBroker::start`] binds a loopback port, runs the broker as a
//! tokio task and returns once it accepts connections. Storage is chosen like
//! tansu does, by kind: [`BrokerStorage::Memory`] for throw-away tests,
//! [`BrokerStorage::Sqlite`] for a file that survives a restart.
//!
//! Only compiled with the `embedded-broker` feature.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;

type TansuBroker = Broker<Controller<StorageContainer>, StorageContainer>;
use thiserror::Error;
use tokio::task::JoinHandle;
use url::Url;

/// Where the embedded broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStorage {
    /// In memory; gone when the broker stops.
    Memory,
    /// A SQLite database file (created if missing).
    Sqlite(PathBuf),
}

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("cannot pick a free loopback port for the embedded broker: {0}")]
    NoFreePort(#[source] std::io::Error),
    #[error("cannot use `{path}` for broker storage: {source}")]
    StoragePath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid broker URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("the embedded broker failed to start on {addr}: {message}")]
    Start { addr: SocketAddr, message: String },
    #[error("the embedded broker on {addr} did not accept connections within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
    #[error("cannot store SASL credentials for `{user}` in the embedded broker: {message}")]
    Credentials { user: String, message: String },
}

/// How an embedded broker runs, beyond its storage.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// Where it listens (default: a free port of 127.0.0.1).
    pub addr: Option<SocketAddr>,
    /// The address clients are told to connect to (default: `addr`); a proxy
    /// in front of it, in tests that tamper with the bytes on the wire.
    pub advertised: Option<SocketAddr>,
    /// Users and passwords allowed in through SASL/SCRAM (SHA-256 and
    /// SHA-512). Non-empty: every request but SASL is refused until the
    /// client has logged in. Needs SQLite storage, where tansu keeps
    /// credentials. (tansu 0.6 offers SCRAM and OAUTHBEARER, not PLAIN, and
    /// validates no OAUTHBEARER token.)
    pub scram_users: Vec<(String, String)>,
}

/// A running embedded broker. Dropping it stops the broker too; [`stop`]
/// (EmbeddedBroker::stop) waits until it has.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: Option<JoinHandle<Result<(), String>>>,
}

impl EmbeddedBroker {
    /// Starts a broker on a free port of 127.0.0.1.
    pub async fn start(storage: BrokerStorage) -> Result<Self, BrokerError> {
        Self::start_with(storage, BrokerOptions::default()).await
    }

    /// Starts a broker listening on `addr`, advertising the same address to clients.
    pub async fn start_on(addr: SocketAddr, storage: BrokerStorage) -> Result<Self, BrokerError> {
        let options = BrokerOptions {
            addr: Some(addr),
            ..BrokerOptions::default()
        };
        Self::start_with(storage, options).await
    }

    /// Starts a broker as `options` say.
    pub async fn start_with(
        storage: BrokerStorage,
        options: BrokerOptions,
    ) -> Result<Self, BrokerError> {
        let addr = match options.addr {
            Some(addr) => addr,
            None => TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(BrokerError::NoFreePort)?,
        };
        let advertised = options.advertised.unwrap_or(addr);
        // tansu binds the listener itself; probe the address first so that a
        // taken port is reported here rather than as a broker that never answers.
        drop(TcpListener::bind(addr).map_err(|e| BrokerError::Start {
            addr,
            message: e.to_string(),
        })?);
        let storage_url = storage_url(&storage)?;
        let listener = parse_url(&format!("tcp://{addr}"))?;
        let advertised = parse_url(&format!("tcp://{advertised}"))?;

        let require_sasl = !options.scram_users.is_empty();
        if require_sasl {
            crate::broker_auth::store_scram_users(&storage_url, &advertised, &options.scram_users)
                .await?;
        }
        let broker = build_broker(&listener, &advertised, &storage_url, addr, require_sasl).await?;

        // `serve` (unlike tansu's `main`) installs no signal handlers: the
        // process that embeds the broker owns ctrl-c and SIGTERM.
        let task = tokio::spawn(async move {
            let mut broker = broker;
            broker
                .serve(tokio::time::Instant::now())
                .await
                .map_err(|e| format!("{e:?}"))
        });

        let mut broker = EmbeddedBroker {
            addr,
            task: Some(task),
        };
        broker.wait_ready(Duration::from_secs(30)).await?;
        tracing::info!(%addr, ?storage, "Embedded broker ready.");
        Ok(broker)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(task) = self.task.as_mut().filter(|t| t.is_finished()) {
                let message = match task.await {
                    Ok(Ok(())) => "it exited immediately".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                self.task = None;
                return Err(BrokerError::Start {
                    addr: self.addr,
                    message,
                });
            }
            let addr = self.addr;
            let connected = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .await
            .unwrap_or(false);
            if connected {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::NotReady {
                    addr: self.addr,
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address clients bootstrap from, as `host:port`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the broker and waits until its task, its connections and its
    /// storage handles are gone, so a new broker can open the same file.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        tracing::info!(addr = %self.addr, "Embedded broker stopped.");
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Builds the broker, retrying while a previous broker on the same SQLite file
/// is still releasing it: its tasks are aborted asynchronously, so the file can
/// stay locked for a moment after [`EmbeddedBroker::stop`] returns.
async fn build_broker(
    listener: &Url,
    advertised: &Url,
    storage: &Url,
    addr: SocketAddr,
    require_sasl: bool,
) -> Result<TansuBroker, BrokerError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let result = TansuBroker::builder()
            .node_id(0)
            .cluster_id(CLUSTER_ID)
            .incarnation_id(uuid::Uuid::new_v4())
            .advertised_listener(advertised.clone())
            .listener(listener.clone())
            .storage(storage.clone())
            .authentication(require_sasl)
            .silent(true)
            .build()
            .await;
        match result {
            Ok(broker) => return Ok(broker),
            // tansu's errors only have a Debug rendering.
            Err(e) => {
                let message = format!("{e:?}");
                if message.contains("database is locked") && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return Err(BrokerError::Start { addr, message });
            }
        }
    }
}

/// The cluster id the embedded broker registers under.
pub(crate) const CLUSTER_ID: &str = "lambda";

fn parse_url(s: &str) -> Result<Url, BrokerError> {
    Url::parse(s).map_err(|e| BrokerError::Url {
        url: s.to_owned(),
        message: e.to_string(),
    })
}

/// tansu resolves a `sqlite://` URL's path against the working directory, even
/// with a leading slash. An opaque URL (`sqlite:` + relative path) keeps `..`
/// segments that a hierarchical URL would normalise away, so we express the
/// absolute path relative to the working directory.
fn storage_url(storage: &BrokerStorage) -> Result<Url, BrokerError> {
    match storage {
        BrokerStorage::Memory => parse_url("memory://tansu/"),
        BrokerStorage::Sqlite(path) => {
            let io_err = |source| BrokerError::StoragePath {
                path: path.clone(),
                source,
            };
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err)?;
            }
            let absolute = std::path::absolute(path).map_err(io_err)?;
            let cwd = std::env::current_dir().map_err(io_err)?;
            let relative = relative_to(&absolute, &cwd);
            let text = relative.to_str().ok_or_else(|| BrokerError::Url {
                url: relative.display().to_string(),
                message: "broker storage paths must be valid UTF-8".to_owned(),
            })?;
            if text.contains(['?', '#', '%']) {
                return Err(BrokerError::Url {
                    url: text.to_owned(),
                    message: "broker storage paths cannot contain ?, # or %".to_owned(),
                });
            }
            parse_url(&format!("sqlite:{text}"))
        }
    }
}

/// `target` as a path relative to `base` (both absolute).
fn relative_to(target: &Path, base: &Path) -> PathBuf {
    let target: Vec<Component<'_>> = target.components().collect();
    let base: Vec<Component<'_>> = base.components().collect();
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for c in &target[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b/c.db"), Path::new("/a/x/y")),
            PathBuf::from("../../b/c.db")
        );
        assert_eq!(
            relative_to(Path::new("/a/b/c.db"), Path::new("/a/b")),
            PathBuf::from("c.db")
        );
        assert_eq!(
            relative_to(Path::new("/t/c.db"), Path::new("/")),
            PathBuf::from("t/c.db")
        );
    }

    #[test]
    fn sqlite_url_keeps_dot_dot_segments() {
        let url = parse_url("sqlite:../../tmp/x/tansu.db").expect("valid");
        assert_eq!(url.path(), "../../tmp/x/tansu.db");
        assert_eq!(url.domain(), None);
    }
}
