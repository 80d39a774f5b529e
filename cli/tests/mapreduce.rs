//! `lambda mapreduce` against an independent count (bench/wordcount.py, the
//! same tokenizer rule written in Python), word for word.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn lambda_mapreduce(input: &Path, threads: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["mapreduce", "--threads", threads, "--input"])
        .arg(input)
        .output()
        .expect("run lambda");
    assert!(
        out.status.success(),
        "lambda mapreduce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8 tsv"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn python_count(input: &Path) -> String {
    let out = Command::new("python3")
        .arg(repo_root().join("bench/wordcount.py"))
        .arg(input)
        .output()
        .expect("python3 is required by this test (CI installs it)");
    assert!(
        out.status.success(),
        "wordcount.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 tsv")
}

fn assert_same(ours: &str, theirs: &str) {
    assert!(!theirs.is_empty());
    let a: Vec<&str> = ours.lines().collect();
    let b: Vec<&str> = theirs.lines().collect();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "line {}", i + 1);
    }
    assert_eq!(a.len(), b.len(), "same number of words");
}

#[test]
fn matches_an_independent_count_on_a_real_text() {
    let input = repo_root().join("cli/tests/data/sample.txt");
    let (ours, summary) = lambda_mapreduce(&input, "2");
    assert_same(&ours, &python_count(&input));
    assert!(
        ours.starts_with("the\t23\n"),
        "count descending: {}",
        &ours[..40]
    );
    assert!(
        summary.contains("events") && summary.contains("MB/s"),
        "{summary}"
    );
    assert!(
        summary.contains("1 skipped"),
        "the invalid UTF-8 line is skipped: {summary}"
    );
}

#[test]
fn matches_an_independent_count_on_a_larger_multi_split_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("corpus.txt");
    let status = Command::new("python3")
        .arg(repo_root().join("bench/gen_corpus.py"))
        .args(["--bytes", "3000000", "--seed", "7", "--output"])
        .arg(&input)
        .status()
        .expect("python3");
    assert!(status.success());
    let expected = python_count(&input);
    for threads in ["1", "2", "3"] {
        let (ours, _) = lambda_mapreduce(&input, threads);
        assert_same(&ours, &expected);
    }
}

#[test]
fn a_missing_input_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["mapreduce", "--input", "/nonexistent/input.txt"])
        .output()
        .expect("run lambda");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/input.txt"),
        "{stderr}"
    );
}
