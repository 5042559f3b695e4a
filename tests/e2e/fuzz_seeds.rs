//! Fuzzing that stays fuzzed: every fuzz target's committed seeds (`fuzz/seeds/<target>/`,
//! crashes found by `scripts/fuzz` included) run through the target's body as a plain test,
//! so a parser that regresses on one of them fails the suite, naming the target and file.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::support::{fails, repo, reprise, s};

#[path = "../../fuzz/src/targets.rs"]
mod targets;

#[test]
fn every_fuzz_target_survives_its_seeds() {
    let seeds = repo().join("fuzz/seeds");
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, target) in targets::TARGETS {
        let dir = seeds.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target needs seeds)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seeds", dir.display());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
            ran += 1;
        }
    }
    assert!(failures.is_empty(), "targets panicked on: {failures:#?}");
    assert!(ran >= 30, "only {ran} seeds ran");
}

#[test]
fn every_fuzz_binary_is_a_listed_target() {
    // A target added to fuzz/fuzz_targets must be listed in TARGETS (and so get seeds).
    let mut binaries: Vec<String> = std::fs::read_dir(repo().join("fuzz/fuzz_targets"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    binaries.sort();
    let mut listed: Vec<String> = targets::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    listed.sort();
    assert_eq!(binaries, listed);
}

#[test]
fn the_lean_clients_parser_reads_what_servers_send() {
    use reprise_replay::h1::parse_response;
    let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    for split in [0, 1, 7, 14, 100] {
        assert_eq!(
            parse_response(chunked, split).unwrap(),
            (200, b"hello world".to_vec()),
            "split {split}"
        );
    }
    let bad = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
    assert!(parse_response(bad, 3).is_err());
    assert!(parse_response(b"HTTP/1.1 2", 0).is_err());
}

#[test]
fn a_footer_pointing_outside_the_file_is_one_line_not_a_panic() {
    // Found by `scripts/fuzz` in CI: a column chunk with a negative offset made the Parquet
    // library panic while reading.
    let seed =
        repo().join("fuzz/seeds/read_parquet/crash-1e5f5610b70ba1c823a4e6b20e45ab0ea5c558f2");
    let err = fails(&reprise(&["trace", "inspect", s(&seed)]));
    assert!(err.contains("outside the file"), "{err}");
    assert!(err.contains("crash-1e5f5610"), "{err}");
}
