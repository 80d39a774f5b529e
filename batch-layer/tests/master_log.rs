//! Master log: appends, recovery from torn tails, refusal of mid-log corruption.

use batch_layer::master_log::{LogError, LogOptions, MasterLog, Record, RecordKind};
use lambda_core::{Cut, Positions};
use std::fs;
use std::path::{Path, PathBuf};

fn event(offset: i64, text: &str) -> Record<'_> {
    Record {
        offset,
        timestamp_ms: Some(1_000 + offset),
        kind: RecordKind::Event,
        payload: text.as_bytes(),
    }
}

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        ..LogOptions::default()
    }
}

/// Every record below `cut`, as (partition, offset, payload).
fn read_all(log: &MasterLog, cut: &Cut) -> Vec<(i32, i64, String)> {
    let mut out = Vec::new();
    for seg in log.segments_below(cut) {
        let bytes = seg.load().expect("load");
        for r in seg.records(&bytes) {
            let r = r.expect("record");
            out.push((
                seg.partition,
                r.offset,
                String::from_utf8_lossy(r.payload).into_owned(),
            ));
        }
    }
    out.sort();
    out
}

fn segment_files(dir: &Path, partition: i32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        fs::read_dir(dir.join("master-log").join(format!("p-{partition}")))
            .expect("partition dir")
            .map(|e| e.expect("entry").path())
            .collect();
    files.sort();
    files
}

fn texts(n: i64) -> Vec<String> {
    (0..n).map(|i| format!("event number {i}")).collect()
}

#[test]
fn appends_survive_reopen_and_redeliveries_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = texts(10);
    {
        let mut log = MasterLog::open(dir.path(), options(1 << 20)).expect("open");
        assert_eq!(
            log.append(0, (0..6).map(|i| event(i, &t[i as usize])))
                .expect("append"),
            6
        );
        // Offsets 4..10: 4 and 5 are redeliveries.
        assert_eq!(
            log.append(0, (4..10).map(|i| event(i, &t[i as usize])))
                .expect("append"),
            4
        );
        assert_eq!(log.append(3, [event(7, "sparse")]).expect("append"), 1);
        log.commit().expect("commit");
    }
    let log = MasterLog::open(dir.path(), options(1 << 20)).expect("reopen");
    let ends = log.end_offsets();
    assert_eq!(ends, [(0, 10), (3, 8)].into_iter().collect());
    let records = read_all(&log, &ends.as_cut());
    assert_eq!(records.len(), 11);
    let p0: Vec<i64> = records.iter().filter(|r| r.0 == 0).map(|r| r.1).collect();
    assert_eq!(p0, (0..10).collect::<Vec<_>>(), "each offset exactly once");
}

#[test]
fn segments_roll_and_reads_stop_at_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = texts(100);
    let mut log = MasterLog::open(dir.path(), options(256)).expect("open");
    for chunk in (0..100).collect::<Vec<i64>>().chunks(7) {
        log.append(1, chunk.iter().map(|&i| event(i, &t[i as usize])))
            .expect("append");
    }
    log.commit().expect("commit");
    assert!(
        segment_files(dir.path(), 1).len() > 5,
        "rolled into several segments"
    );
    let cut: Cut = [(1, 42)].into_iter().collect();
    let records = read_all(&log, &cut);
    assert_eq!(
        records.iter().map(|r| r.1).collect::<Vec<_>>(),
        (0..42).collect::<Vec<_>>()
    );
    drop(log);
    let log = MasterLog::open(dir.path(), options(256)).expect("reopen");
    assert_eq!(log.end_offsets().get(1), 100);
}

/// Transactions leave offsets with no event: the commit or abort marker,
/// and an aborted transaction's records, which a read-committed consumer
/// never delivers. The log keeps the gaps as they are, resumes after the
/// last record it has, reads exactly the records below any cut (one inside a
/// gap too), and skips redeliveries across a gap.
#[test]
fn offset_gaps_left_by_transaction_markers_are_kept_and_resumed_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 3 and 4: an aborted transaction's record and its marker; 7: a marker;
    // 8: another aborted record. Tiny segments, so some roll at a gap.
    let offsets = [0, 1, 2, 5, 6, 9];
    {
        let mut log = MasterLog::open(dir.path(), options(64)).expect("open");
        let text = |o: i64| format!("committed {o}");
        let texts: Vec<(i64, String)> = offsets.iter().map(|&o| (o, text(o))).collect();
        assert_eq!(
            log.append(0, texts.iter().map(|(o, t)| event(*o, t)))
                .expect("append"),
            6
        );
        // A redelivery from inside the gap on: nothing new.
        assert_eq!(
            log.append(0, texts[3..].iter().map(|(o, t)| event(*o, t)))
                .expect("append"),
            0
        );
        log.commit().expect("commit");
    }
    let mut log = MasterLog::open(dir.path(), options(64)).expect("reopen");
    assert_eq!(log.end_offsets().get(0), 10, "resume after the last record");
    let below = |log: &MasterLog, cut: i64| -> Vec<i64> {
        let cut: Cut = [(0, cut)].into_iter().collect();
        read_all(log, &cut).into_iter().map(|r| r.1).collect()
    };
    assert_eq!(below(&log, 4), [0, 1, 2], "a cut inside a gap");
    assert_eq!(below(&log, 8), [0, 1, 2, 5, 6]);
    assert_eq!(below(&log, 10), offsets);
    assert_eq!(
        log.append(0, [event(12, "after a gap")]).expect("append"),
        1
    );
    assert_eq!(log.end_offsets().get(0), 13);
}

/// Writes 5 records and returns the file and where the last record starts.
fn five_records(dir: &Path) -> (PathBuf, u64, u64) {
    let t = texts(5);
    let mut log = MasterLog::open(dir, options(1 << 20)).expect("open");
    log.append(0, (0..4).map(|i| event(i, &t[i as usize])))
        .expect("append");
    log.commit().expect("commit");
    let file = segment_files(dir, 0).pop().expect("segment");
    let last_start = fs::metadata(&file).expect("meta").len();
    log.append(0, [event(4, &t[4])]).expect("append");
    log.commit().expect("commit");
    let end = fs::metadata(&file).expect("meta").len();
    (file, last_start, end)
}

#[test]
fn a_torn_last_record_is_truncated_at_every_byte_position() {
    let template = tempfile::tempdir().expect("tempdir");
    let (file, last_start, end) = five_records(template.path());
    let original = fs::read(&file).expect("read");
    for len in last_start..end {
        let dir = tempfile::tempdir().expect("tempdir");
        let p0 = dir.path().join("master-log").join("p-0");
        fs::create_dir_all(&p0).expect("mkdir");
        let copy = p0.join(file.file_name().expect("name"));
        fs::write(&copy, &original[..len as usize]).expect("write");

        let log = MasterLog::open(dir.path(), options(1 << 20))
            .unwrap_or_else(|e| panic!("torn at {len}: {e}"));
        assert_eq!(
            log.end_offsets().get(0),
            4,
            "torn at {len}: resume before the torn record"
        );
        assert_eq!(
            fs::metadata(&copy).expect("meta").len(),
            last_start,
            "torn at {len}: tail cut off"
        );
        assert_eq!(read_all(&log, &log.end_offsets().as_cut()).len(), 4);
    }
}

#[test]
fn a_bad_checksum_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, last_start, end) = five_records(dir.path());
    let mut bytes = fs::read(&file).expect("read");
    bytes[(end - 1) as usize] ^= 0xff;
    fs::write(&file, &bytes).expect("write");
    let log = MasterLog::open(dir.path(), options(1 << 20)).expect("recovers");
    assert_eq!(log.end_offsets().get(0), 4);
    assert_eq!(fs::metadata(&file).expect("meta").len(), last_start);
}

#[test]
fn corruption_in_the_middle_refuses_to_start_naming_file_and_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _, _) = five_records(dir.path());
    let mut bytes = fs::read(&file).expect("read");
    // Inside the second record's payload.
    let position = 40;
    bytes[position + 20] ^= 0x01;
    fs::write(&file, &bytes).expect("write");
    let err = MasterLog::open(dir.path(), options(1 << 20)).expect_err("must refuse");
    match &err {
        LogError::Corrupt {
            path, position: at, ..
        } => {
            assert_eq!(path, &file);
            assert!(*at > 0 && *at <= position as u64 + 20, "position {at}");
        }
        other => panic!("unexpected error {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()) && message.contains("--repair"),
        "{message}"
    );
    assert_eq!(
        fs::read(&file).expect("read"),
        bytes,
        "nothing was modified"
    );
}

#[test]
fn corruption_in_an_older_segment_refuses_and_repair_quarantines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = texts(60);
    {
        let mut log = MasterLog::open(dir.path(), options(200)).expect("open");
        for i in 0..60 {
            log.append(0, [event(i, &t[i as usize])]).expect("append");
        }
        log.commit().expect("commit");
    }
    let files = segment_files(dir.path(), 0);
    assert!(files.len() >= 3);
    let victim = &files[1];
    let mut bytes = fs::read(victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // the end of an older segment is not a torn tail
    fs::write(victim, &bytes).expect("write");

    let err = MasterLog::open(dir.path(), options(200)).expect_err("must refuse");
    assert!(
        matches!(&err, LogError::Corrupt { path, .. } if path == victim),
        "{err}"
    );

    let repaired = MasterLog::open(
        dir.path(),
        LogOptions {
            repair: true,
            ..options(200)
        },
    )
    .expect("repair");
    let first_bad_base: i64 = victim
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("base offset");
    assert_eq!(
        repaired.end_offsets().get(0),
        first_bad_base,
        "ingestion resumes at the quarantined segment"
    );
    let quarantined = dir
        .path()
        .join("quarantine")
        .join("p-0")
        .join(victim.file_name().expect("name"));
    assert!(quarantined.exists());
}

/// A full disk in the middle of a batch over two partitions: the failed
/// partition is cut back to its last commit (no partial record is left), and
/// once space is back the retried batch lands exactly once.
#[test]
fn a_full_disk_leaves_no_partial_batch_and_the_retry_lands_exactly_once() {
    let mount_point = std::env::temp_dir().join(testkit::unique("lambda-log-fs"));
    let fs = testkit::Tmpfs::mount(mount_point, "64k");
    let payload = "x".repeat(1000);
    let batch = |log: &mut MasterLog, from: [i64; 2]| -> Result<(), LogError> {
        for (p, &start) in from.iter().enumerate() {
            log.append(p as i32, (start..start + 4).map(|o| event(o, &payload)))?;
        }
        log.commit()
    };
    let mut log = MasterLog::open(fs.path(), options(8 * 1024)).expect("open");
    let mut next = [0i64; 2];
    let error = loop {
        match batch(&mut log, next) {
            Ok(()) => next = next.map(|n| n + 4),
            Err(error) => break error,
        }
        assert!(next[0] < 10_000, "a 64 KiB tmpfs never filled up");
    };
    assert!(matches!(error, LogError::Io { .. }), "{error}");
    // Each partition holds whole batches only, contiguous from offset 0.
    let ends = log.end_offsets();
    for p in 0..2 {
        let end = ends.get(p);
        assert!(
            end == next[p as usize] || end == next[p as usize] + 4,
            "partition {p} ends at {end}, batches end at {next:?}"
        );
    }
    let offsets = |log: &MasterLog| -> Vec<(i32, i64)> {
        read_all(log, &log.end_offsets().as_cut())
            .into_iter()
            .map(|(p, o, text)| {
                assert_eq!(text, payload);
                (p, o)
            })
            .collect()
    };
    let contiguous = |ends: &Positions| -> Vec<(i32, i64)> {
        (0..2)
            .flat_map(|p| (0..ends.get(p)).map(move |o| (p, o)))
            .collect()
    };
    assert_eq!(offsets(&log), contiguous(&ends));

    fs.resize("16m");
    batch(&mut log, next).expect("the retry succeeds once space is back");
    drop(log);
    let log = MasterLog::open(fs.path(), options(8 * 1024)).expect("reopen: no torn tail");
    let want: Positions = [(0, next[0] + 4), (1, next[1] + 4)].into_iter().collect();
    assert_eq!(log.end_offsets(), want);
    assert_eq!(
        offsets(&log),
        contiguous(&want),
        "every record exactly once"
    );
}

/// Reading from an offset in the middle of a big segment starts near it
/// (the in-memory sparse index, built while appending and again by the
/// recovery scan), and yields exactly the records from that offset on.
#[test]
fn reads_from_an_offset_start_near_it_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let texts = texts(60_000);
    let read_between = |log: &MasterLog, from: i64, to: i64| {
        let from_cut: Cut = [(0, from)].into_iter().collect();
        let to_cut: Cut = [(0, to)].into_iter().collect();
        let segments = log.segments_between(&from_cut, &to_cut);
        let mut offsets = Vec::new();
        let mut skipped_bytes = 0;
        for seg in &segments {
            skipped_bytes += seg.from_byte;
            let bytes = seg.load().expect("load");
            for r in seg.records(&bytes) {
                offsets.push(r.expect("record").offset);
            }
        }
        (offsets, skipped_bytes)
    };
    let check = |log: &MasterLog| {
        for (from, to) in [(0, 10), (31_234, 31_300), (59_990, 60_000), (12, 59_000)] {
            let (offsets, skipped) = read_between(log, from, to);
            assert_eq!(offsets, (from..to).collect::<Vec<_>>(), "{from}..{to}");
            if from > 20_000 {
                assert!(skipped > 1 << 20, "{from}..{to} read from byte {skipped}");
            }
        }
    };
    {
        let mut log = MasterLog::open(dir.path(), options(64 << 20)).expect("open");
        let records: Vec<Record<'_>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| event(i as i64, t))
            .collect();
        for chunk in records.chunks(7_000) {
            log.append(0, chunk.iter().copied()).expect("append");
            log.commit().expect("commit");
        }
        assert_eq!(segment_files(dir.path(), 0).len(), 1, "one big segment");
        check(&log);
    }
    let log = MasterLog::open(dir.path(), options(64 << 20)).expect("reopen");
    check(&log);
}
