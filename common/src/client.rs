//! How every Kafka client of a role reaches the cluster: bootstrap servers,
//! TLS, SASL, the codec for what the role produces, and any librdkafka
//! setting the flags do not cover.
//!
//! [`ClientArgs`] are the flags (each also a `LAMBDA_*` variable);
//! [`Connection`] is what they resolve to, handed to every client a role
//! creates (`kafka::client_config` and the consumer and producer configs built
//! on it). Secrets never reach a log: [`Connection`]'s `Debug` and
//! [`Connection::describe`] redact them.
//!
//! | layer of settings | applied | who sets it |
//! |---|---|---|
//! | ours (`kafka::client_config`, consumer/producer delivery settings) | first | this crate |
//! | `--security-protocol`, `--ssl-*`, `--sasl-*`, `--compression` | then | the user, by name |
//! | `--kafka-option key=value` | last, so it wins | the user, any librdkafka key |
//!
//! The few keys our exactness rests on (who owns offsets, read-committed
//! isolation) are refused in `--kafka-option`, with the reason.

use crate::config::{env, ConfigError};
use clap::{Args, ValueEnum};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A value that must not be printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_kafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    fn as_kafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// The codec of record batches a role produces (realtime counts, dead
/// letters, `lambda produce`). Consumers read every codec whatever this is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The value of librdkafka's `compression.type`.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// One `--kafka-option key=value`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    pub key: String,
    pub value: String,
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, shown_value(&self.key, &self.value))
    }
}

impl FromStr for KafkaOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{}` is not key=value", redact_option_text(s)))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("`{key}` is not a librdkafka setting name"));
        }
        Ok(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Keys our delivery guarantees rest on; a `--kafka-option` may not change them.
const RESERVED_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "use --brokers"),
    ("group.id", "each layer's consumer group is fixed"),
    (
        "enable.auto.commit",
        "layers resume from their own durable state",
    ),
    (
        "enable.auto.offset.store",
        "layers resume from their own durable state",
    ),
    ("isolation.level", "only committed events may be counted"),
    (
        "enable.partition.eof",
        "the layers' consumer loops rely on it being off",
    ),
    (
        "auto.offset.reset",
        "a position the topic no longer holds must stop the layer, not skip events",
    ),
];

/// Whether a setting's value is a secret (never logged).
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "token",
    ]
    .iter()
    .any(|s| key.contains(s))
}

fn shown_value<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_key(key) {
        "[redacted]"
    } else {
        value
    }
}

/// A malformed `key=value` may still hold a secret: show only its key part.
fn redact_option_text(s: &str) -> String {
    match s.split_once('=') {
        Some((key, _)) => format!("{key}=…"),
        None if s.len() > 40 => "…".to_owned(),
        None => s.to_owned(),
    }
}

/// The flags every role (and `lambda produce`) takes to reach its cluster.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// How clients talk to the brokers (librdkafka `security.protocol`).
    /// Default: plaintext, or sasl_plaintext when --sasl-mechanism is set.
    #[arg(long, env = env::SECURITY_PROTOCOL, value_enum)]
    pub security_protocol: Option<SecurityProtocol>,

    /// PEM file of the CA certificates that sign the brokers' certificates
    /// (default: the system's trust store).
    #[arg(long, env = env::SSL_CA_LOCATION)]
    pub ssl_ca_location: Option<PathBuf>,

    /// PEM file of this client's certificate, for clusters that require
    /// client authentication (mutual TLS).
    #[arg(long, env = env::SSL_CERTIFICATE_LOCATION)]
    pub ssl_certificate_location: Option<PathBuf>,

    /// PEM file of this client's private key.
    #[arg(long, env = env::SSL_KEY_LOCATION)]
    pub ssl_key_location: Option<PathBuf>,

    /// The private key's password, if it is encrypted.
    #[arg(long, env = env::SSL_KEY_PASSWORD, hide_env_values = true)]
    pub ssl_key_password: Option<Secret>,

    /// SASL mechanism.
    #[arg(long, env = env::SASL_MECHANISM, value_enum)]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name (PLAIN, SCRAM).
    #[arg(long, env = env::SASL_USERNAME)]
    pub sasl_username: Option<String>,

    /// SASL password (PLAIN, SCRAM). Prefer the variable to the flag, which
    /// other users of the machine can see in the process list.
    #[arg(long, env = env::SASL_PASSWORD, hide_env_values = true)]
    pub sasl_password: Option<Secret>,

    /// Codec for the record batches this role produces.
    #[arg(long, env = env::COMPRESSION, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,

    /// Any librdkafka setting, `key=value`, applied to every client after
    /// ours (repeat the flag; in the variable, separate with `;`). Values of
    /// keys naming a password, secret, token or JAAS config are never logged.
    #[arg(long = "kafka-option", env = env::KAFKA_OPTIONS, value_delimiter = ';', hide_env_values = true)]
    pub kafka_options: Vec<KafkaOption>,
}

impl ClientArgs {
    /// Checks the combination; errors name the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for option in &self.kafka_options {
            if let Some((_, why)) = RESERVED_KEYS.iter().find(|(k, _)| *k == option.key) {
                return Err(ConfigError::new(
                    "kafka-option",
                    format!("`{}` cannot be overridden: {why}", option.key),
                ));
            }
        }
        let protocol = self.protocol();
        if let (Some(p), Some(_)) = (self.security_protocol, self.sasl_mechanism) {
            if !p.uses_sasl() {
                return Err(ConfigError::new(
                    "sasl-mechanism",
                    format!(
                        "needs --security-protocol sasl_plaintext or sasl_ssl, not {}",
                        p.as_kafka()
                    ),
                ));
            }
        }
        if protocol.uses_sasl() {
            match self.sasl_mechanism {
                None => {
                    return Err(ConfigError::new(
                        "security-protocol",
                        format!("{} needs --sasl-mechanism", protocol.as_kafka()),
                    ))
                }
                Some(SaslMechanism::OauthBearer) => {}
                Some(m) => {
                    if self.sasl_username.as_deref().unwrap_or_default().is_empty() {
                        return Err(ConfigError::new(
                            "sasl-username",
                            format!("{} needs a user name", m.as_kafka()),
                        ));
                    }
                    if self.sasl_password.is_none() {
                        return Err(ConfigError::new(
                            "sasl-password",
                            format!("{} needs a password", m.as_kafka()),
                        ));
                    }
                }
            }
        }
        for (flag, path) in [
            ("ssl-ca-location", &self.ssl_ca_location),
            ("ssl-certificate-location", &self.ssl_certificate_location),
            ("ssl-key-location", &self.ssl_key_location),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(ConfigError::new(
                        flag,
                        format!("`{}` is not a readable file", path.display()),
                    ));
                }
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(ConfigError::new(
                "ssl-key-location",
                "a client certificate and its key go together",
            ));
        }
        Ok(())
    }

    fn protocol(&self) -> SecurityProtocol {
        match (self.security_protocol, self.sasl_mechanism) {
            (Some(p), _) => p,
            (None, Some(_)) => SecurityProtocol::SaslPlaintext,
            (None, None) => SecurityProtocol::Plaintext,
        }
    }

    /// The settings these flags stand for, in the order they are applied.
    fn settings(&self) -> Vec<(String, String)> {
        let mut settings = Vec::new();
        let mut set = |k: &str, v: &str| settings.push((k.to_owned(), v.to_owned()));
        let protocol = self.protocol();
        if protocol != SecurityProtocol::Plaintext {
            set("security.protocol", protocol.as_kafka());
        }
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(p) = &self.ssl_ca_location {
            set("ssl.ca.location", &path(p));
        }
        if let Some(p) = &self.ssl_certificate_location {
            set("ssl.certificate.location", &path(p));
        }
        if let Some(p) = &self.ssl_key_location {
            set("ssl.key.location", &path(p));
        }
        if let Some(s) = &self.ssl_key_password {
            set("ssl.key.password", s.expose());
        }
        if let Some(m) = self.sasl_mechanism {
            set("sasl.mechanism", m.as_kafka());
        }
        if let Some(u) = &self.sasl_username {
            set("sasl.username", u);
        }
        if let Some(s) = &self.sasl_password {
            set("sasl.password", s.expose());
        }
        for option in &self.kafka_options {
            set(&option.key, &option.value);
        }
        settings
    }

    /// The connection every client of a role uses.
    pub fn connection(&self, brokers: &str) -> Connection {
        Connection {
            brokers: brokers.to_owned(),
            settings: self.settings(),
            compression: self.compression,
        }
    }
}

/// Everything a Kafka client of this process needs to reach the cluster.
/// `Display` is the bootstrap list (for messages); `Debug` redacts secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    brokers: String,
    settings: Vec<(String, String)>,
    compression: Compression,
}

impl Connection {
    /// Plain TCP, no authentication, no compression: the embedded broker's
    /// default, and what tests use.
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            settings: Vec::new(),
            compression: Compression::None,
        }
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The same connection with another codec for what it produces.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// The user's settings, applied after ours to every client.
    pub(crate) fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    /// One line for the start-up log: every setting, secrets redacted.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("bootstrap.servers={}", self.brokers),
            format!("compression.type={}", self.compression.as_kafka()),
        ];
        parts.extend(
            self.settings
                .iter()
                .map(|(k, v)| format!("{k}={}", shown_value(k, v))),
        );
        parts.join(" ")
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.brokers)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({})", self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    fn parse(args: &[&str]) -> ClientArgs {
        let mut all = vec!["lambda"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parses").client
    }

    #[test]
    fn sasl_scram_over_tls_becomes_librdkafka_settings_in_order() {
        let client = parse(&[
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "s3cret",
            "--kafka-option",
            "client.rack=eu-1a",
            "--kafka-option",
            "sasl.username=bob",
            "--compression",
            "zstd",
        ]);
        client.validate().expect("valid");
        let c = client.connection("b:9093");
        let settings = c.settings();
        let get = |k: &str| {
            settings
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(get("client.rack"), Some("eu-1a"));
        // A pass-through option comes after the named flags, so it wins.
        assert_eq!(get("sasl.username"), Some("bob"));
        assert_eq!(c.compression(), Compression::Zstd);
    }

    #[test]
    fn secrets_never_show_in_debug_or_describe() {
        let client = parse(&[
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "hunter2",
            "--kafka-option",
            "sasl.oauthbearer.client.secret=topsecret",
            "--kafka-option",
            "ssl.key.pem=-----BEGIN PRIVATE KEY-----xyz",
        ]);
        client.validate().expect("valid");
        let c = client.connection("b:9092");
        for text in [format!("{c:?}"), c.describe(), format!("{client:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("topsecret"), "{text}");
            assert!(!text.contains("xyz"), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        // Without a protocol, a mechanism implies sasl_plaintext.
        assert!(c.describe().contains("security.protocol=sasl_plaintext"));
        assert!(c.describe().contains("sasl.username=alice"));
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let flag = |args: &[&str]| parse(args).validate().map_err(|e| e.flag);
        assert_eq!(
            flag(&["--kafka-option", "enable.auto.commit=true"]),
            Err("kafka-option")
        );
        assert_eq!(
            flag(&["--kafka-option", "isolation.level=read_uncommitted"]),
            Err("kafka-option")
        );
        assert_eq!(
            flag(&["--security-protocol", "sasl_ssl"]),
            Err("security-protocol")
        );
        assert_eq!(
            flag(&["--sasl-mechanism", "SCRAM-SHA-256", "--sasl-password", "p"]),
            Err("sasl-username")
        );
        assert_eq!(
            flag(&["--sasl-mechanism", "PLAIN", "--sasl-username", "u"]),
            Err("sasl-password")
        );
        assert_eq!(
            flag(&["--security-protocol", "ssl", "--sasl-mechanism", "PLAIN"]),
            Err("sasl-mechanism")
        );
        assert_eq!(
            flag(&["--ssl-ca-location", "/nonexistent/ca.pem"]),
            Err("ssl-ca-location")
        );
        assert_eq!(flag(&["--sasl-mechanism", "OAUTHBEARER"]), Ok(()));
        assert_eq!(flag(&[]), Ok(()));
        // A malformed option is refused at parse time, without echoing a value.
        let err =
            Cli::try_parse_from(["lambda", "--kafka-option", "sasl.password"]).expect_err("no =");
        assert!(err.to_string().contains("key=value"), "{err}");
    }

    #[test]
    fn options_from_the_environment_variable_split_on_semicolons() {
        let client =
            Cli::try_parse_from(["lambda", "--kafka-option", "a.b=1;ssl.cipher.suites=X,Y"])
                .expect("parses")
                .client;
        assert_eq!(client.kafka_options.len(), 2);
        assert_eq!(client.kafka_options[1].value, "X,Y");
    }
}
