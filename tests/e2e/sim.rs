//! `reprise sim` as a process: it serves on the address it prints and stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sim_serves_streams_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--profile",
            "small-t4",
            "--model",
            "tiny",
            "--speedup",
            "50",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{banner}"))
        .to_owned();
    assert!(banner.contains("serving model `tiny`"), "{banner}");
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#;
    let reply = http(
        &addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"completion_tokens\":5"), "{reply}");
    assert!(reply.contains("data: [DONE]"), "{reply}");
    let metrics = http(
        &addr,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("vllm:generation_tokens_total{model_name=\"tiny\"} 5"),
        "{metrics}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("stopping")), "{rest:?}");
}

#[test]
fn sim_profiles_print_and_bad_ones_fail() {
    let out = ok(&reprise(&[
        "sim",
        "--profile",
        "llama-70b-4xh100",
        "--print-profile",
    ]));
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["model"], "llama-3.1-70b-instruct");
    let err = fails(&reprise(&["sim", "--profile", "nope"]));
    assert!(
        err.contains(
            "unknown profile `nope` (built-ins: llama-8b-h100, llama-70b-4xh100, small-t4, instant)"
        ),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, r#"{"base": "small-t4", "max_num_seqs": 0}"#).unwrap();
    let err = fails(&reprise(&[
        "sim",
        "--profile-file",
        s(&file),
        "--print-profile",
    ]));
    assert!(err.contains("max_num_seqs"), "{err}");
}
