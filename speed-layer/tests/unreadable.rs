//! A record batch the consumer cannot read stops the speed layer loudly:
//! it is neither skipped (a lost event) nor retried in a warning loop while
//! the layer claims to be ready (a partition stalled for good).
//!
//! The batch is made unreadable on the wire: a proxy between the layer and
//! the embedded broker flips one byte of a marked record in fetch
//! responses, so the batch's CRC no longer matches, exactly what a corrupt
//! or foreign batch looks like to a consumer.

use clap::Parser;
use common::broker::{BrokerStorage, EmbeddedBroker};
use common::shutdown::CancellationToken;
use common::testkit::{get, metric_sum, produce, unique, wait_for};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct SpeedCli {
    #[command(flatten)]
    args: speed_layer::config::SpeedArgs,
}

const MARKER: &[u8] = b"poisonmarker";

/// Replaces every `MARKER` in `bytes` with a copy whose last byte differs.
fn corrupt(bytes: &mut [u8]) -> usize {
    let mut hits = 0;
    let mut i = 0;
    while i + MARKER.len() <= bytes.len() {
        if &bytes[i..i + MARKER.len()] == MARKER {
            bytes[i + MARKER.len() - 1] ^= 0x20;
            hits += 1;
            i += MARKER.len();
        } else {
            i += 1;
        }
    }
    hits
}

/// Forwards connections on `listener` to `upstream`, corrupting the marker
/// in what the broker sends back. (A marker split across two reads would
/// pass unharmed; the test's fetch responses are a few hundred bytes.)
async fn proxy(listener: TcpListener, upstream: SocketAddr) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                corrupt(&mut buf[..n]);
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_stops_the_speed_layer_with_the_reason() {
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
    let proxy_addr = proxy_listener.local_addr().expect("addr");
    let broker_addr = free_addr();
    let broker = EmbeddedBroker::start_advertising(broker_addr, proxy_addr, BrokerStorage::Memory)
        .await
        .expect("broker starts");
    tokio::spawn(proxy(proxy_listener, broker_addr));
    let brokers = proxy_addr.to_string();
    let topic = unique("unreadable");
    let (dlq, rt) = (format!("{topic}.dlq"), format!("{topic}.rt"));
    let dir = tempfile::tempdir().expect("tempdir");
    let token = CancellationToken::new();
    let args = SpeedCli::try_parse_from([
        "x",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--dead-letter-topic",
        &dlq,
        "--realtime-topic",
        &rt,
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--http-addr",
        "127.0.0.1:0",
        "--partitions",
        "1",
        "--bucket-size",
        "8",
    ])
    .expect("flags")
    .args;
    let running = speed_layer::start(args, token.clone())
        .await
        .expect("starts");
    let addr = running.http_addr;

    // Readable events are counted and the layer is ready.
    let good: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("k{i}"), b"alpha beta".to_vec()))
        .collect();
    produce(&brokers, &topic, good).await;
    tokio::task::spawn_blocking(move || {
        wait_for("the readable events", Duration::from_secs(60), || {
            let m = get(addr, "/metrics").ok()?.text();
            (metric_sum(&m, "lambda_speed_position") as usize == 20).then_some(())
        });
        assert_eq!(get(addr, "/readyz").expect("readyz").status, 200);
    })
    .await
    .expect("join");

    // Then a record the consumer will receive with a broken CRC.
    produce(
        &brokers,
        &topic,
        vec![("poison".to_owned(), b"a poisonmarker here".to_vec())],
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("the speed layer stops by itself instead of retrying forever");
    let error = outcome.expect_err("the speed layer reports a failure");
    let text = error.to_string();
    assert!(text.contains("cannot read records"), "{text}");
    assert!(text.contains(&topic), "{text}");

    // The events before the unreadable batch were checkpointed; the batch
    // itself was not skipped: it is still ahead of the checkpoint.
    let store = speed_layer::store::RealtimeStore::open(&dir.path().join("realtime"))
        .expect("store reopens");
    assert_eq!(store.offsets().expect("offsets").get(0), 20);
    broker.stop().await;
}

#[test]
fn the_proxy_corrupts_only_the_marker() {
    let mut bytes = b"xx poisonmarker yy poisonmarker".to_vec();
    assert_eq!(corrupt(&mut bytes), 2);
    assert_eq!(&bytes, b"xx poisonmarkeR yy poisonmarkeR");
    let mut clean = b"alpha beta".to_vec();
    assert_eq!(corrupt(&mut clean), 0);
}
