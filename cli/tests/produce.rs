//! `lambda produce`: every line arrives as one record, byte for byte (invalid
//! UTF-8 included: the layers dead-letter it, the producer does not judge),
//! blank lines are skipped, and delivery failures make the exit code non-zero.

use ::common::broker::{BrokerStorage, EmbeddedBroker};
use ::testkit::{consume_n, unique};
use std::process::{Command, Stdio};

fn lambda(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("lambda runs")
}

/// An in-memory embedded broker with a new topic of `partitions`.
async fn broker_with_topic(name: &str, partitions: i32) -> (EmbeddedBroker, String, String) {
    let broker = EmbeddedBroker::start(BrokerStorage::Memory)
        .await
        .expect("broker");
    let brokers = broker.bootstrap();
    let topic = unique(name);
    ::common::kafka::ensure_topic(
        &::common::client::Connection::plaintext(&brokers),
        &topic,
        partitions,
        std::time::Duration::from_secs(30),
    )
    .await
    .expect("topic");
    (broker, brokers, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_becomes_one_record() {
    let (broker, brokers, topic) = broker_with_topic("produce", 3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.txt");
    let mut lines: Vec<Vec<u8>> = (0..1500)
        .map(|i| format!("event {i} Café").into_bytes())
        .collect();
    lines.push(b"not utf-8 \xff\xfe".to_vec());
    let mut text = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        text.extend_from_slice(l);
        text.extend_from_slice(if i % 2 == 0 { b"\r\n" } else { b"\n" });
        if i == 10 {
            text.extend_from_slice(b"   \n\n");
        }
    }
    std::fs::write(&input, &text).expect("write input");

    let (b, t, i) = (
        brokers.clone(),
        topic.clone(),
        input.to_str().expect("utf-8").to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        lambda(&[
            "produce",
            &i,
            "--brokers",
            &b,
            "--topic",
            &t,
            "--key-by-line",
            "--rate",
            "5000",
        ])
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("produced 1501 events"), "{stderr}");
    assert!(stderr.contains("2 blank lines skipped"), "{stderr}");

    let records = consume_n(
        &brokers,
        &topic,
        lines.len(),
        std::time::Duration::from_secs(30),
    )
    .await;
    let mut got: Vec<(u64, Vec<u8>)> = records
        .into_iter()
        .map(|r| {
            let key = String::from_utf8(r.key.expect("keyed")).expect("utf-8 key");
            (key.parse().expect("a line number"), r.payload)
        })
        .collect();
    got.sort();
    // Line numbers count the blank lines too (two after line 11).
    let expected: Vec<(u64, Vec<u8>)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1 + if i > 10 { 2 } else { 0 }, l.clone()))
        .collect();
    assert_eq!(got, expected);

    // An oversized line is refused by the client: reported, exit code 1,
    // and the other lines still go out.
    let big = dir.path().join("big.txt");
    std::fs::write(
        &big,
        format!("small one\n{}\nsmall two\n", "x".repeat(2 << 20)),
    )
    .expect("write");
    let (b, t, i) = (
        brokers.clone(),
        topic.clone(),
        big.to_str().expect("utf-8").to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        lambda(&["produce", &i, "--brokers", &b, "--topic", &t])
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 of 3 events were not delivered"),
        "{stderr}"
    );
    assert!(stderr.contains("produced 2 events"), "{stderr}");
    broker.stop().await;
}

/// `--backdate` stamps the lines with event times spread evenly over the
/// span, the first one span ago and the last one now, in line order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdated_lines_carry_event_times_spread_over_the_span() {
    let (broker, brokers, topic) = broker_with_topic("backdate", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("history.txt");
    let text: String = (0..61).map(|i| format!("minute {i}\n\n")).collect();
    std::fs::write(&input, text).expect("write input");

    let before = ::common::now_ms();
    let (b, t, i) = (
        brokers.clone(),
        topic.clone(),
        input.to_str().expect("utf-8").to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        lambda(&[
            "produce",
            &i,
            "--brokers",
            &b,
            "--topic",
            &t,
            "--backdate",
            "1h",
        ])
    })
    .await
    .expect("join");
    let after = ::common::now_ms();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("produced 61 events"), "{stderr}");

    let records = consume_n(&brokers, &topic, 61, std::time::Duration::from_secs(30)).await;
    let mut times: Vec<(u64, i64)> = records
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.payload.clone()).expect("utf-8");
            let minute = text["minute ".len()..].parse().expect("a number");
            (minute, r.timestamp_ms.expect("a timestamp"))
        })
        .collect();
    times.sort();
    let (first, last) = (times[0].1, times[60].1);
    assert!(
        (before - 3_600_000..=after - 3_600_000).contains(&first),
        "first line stamped {first}, produced between {before} and {after}"
    );
    for (minute, t) in &times {
        assert_eq!(*t, first + *minute as i64 * 60_000, "line {minute}");
    }
    assert!(last <= after);

    // Standard input cannot be counted ahead, so it is refused.
    let out = lambda(&["produce", "-", "--brokers", &brokers, "--backdate", "1h"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backdate needs a file"));
    broker.stop().await;
}

#[test]
fn an_unreachable_broker_or_missing_input_fails_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.txt");
    std::fs::write(&input, "one\ntwo\n").expect("write input");
    let out = lambda(&[
        "produce",
        input.to_str().expect("utf-8"),
        "--brokers",
        "127.0.0.1:1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("does not exist on 127.0.0.1:1"), "{stderr}");

    let out = lambda(&["produce", "/nonexistent/file", "--brokers", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/file"));
}

/// `lambda produce` reaches a broker behind TLS that requires SASL/SCRAM
/// through the `LAMBDA_*` variables, compresses with the codec asked for,
/// and its password never shows in its output, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_over_tls_and_sasl_from_the_environment_without_printing_the_password() {
    use ::common::client::{ClientArgs, SaslMechanism, SecurityProtocol};
    const PASSWORD: &str = "produce-secret-4711";
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, brokers, certs) =
        ::testkit::secured_broker(dir.path(), "lambda", PASSWORD, false).await;
    let kafka = ClientArgs {
        security_protocol: Some(SecurityProtocol::SaslSsl),
        ssl_ca_location: Some(certs.ca.clone()),
        sasl_mechanism: Some(SaslMechanism::ScramSha256),
        sasl_username: Some("lambda".into()),
        sasl_password: Some(PASSWORD.parse().expect("infallible")),
        ..ClientArgs::default()
    }
    .connection(&brokers);
    let topic = unique("produce-secured");
    ::common::kafka::ensure_topic(&kafka, &topic, 2, std::time::Duration::from_secs(30))
        .await
        .expect("topic");
    let input = dir.path().join("events.txt");
    std::fs::write(&input, "one event\nanother event\na third\n").expect("write input");

    let (ca, t, i) = (
        certs.ca.to_str().expect("utf-8").to_owned(),
        topic.clone(),
        input.to_str().expect("utf-8").to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_lambda"))
            .args(["produce", &i, "--topic", &t])
            .env("RUST_LOG", "debug")
            .env("LAMBDA_BROKERS", &brokers)
            .env("LAMBDA_SECURITY_PROTOCOL", "sasl_ssl")
            .env("LAMBDA_SSL_CA_LOCATION", &ca)
            .env("LAMBDA_SASL_MECHANISM", "SCRAM-SHA-256")
            .env("LAMBDA_SASL_USERNAME", "lambda")
            .env("LAMBDA_SASL_PASSWORD", PASSWORD)
            .env("LAMBDA_COMPRESSION", "zstd")
            .env(
                "LAMBDA_KAFKA_OPTIONS",
                "client.id=lambda-produce-test;linger.ms=1",
            )
            .stdin(Stdio::null())
            .output()
            .expect("lambda runs")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("produced 3 events"), "{stderr}");
    assert!(stderr.contains("compression.type=zstd"), "{stderr}");
    assert!(stderr.contains("client.id=lambda-produce-test"), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));
    let records = consume_n(&kafka, &topic, 3, std::time::Duration::from_secs(30)).await;
    assert_eq!(records.len(), 3);
    broker.stop().await;
}
