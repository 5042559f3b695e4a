//! Client → proxy → upstream over loopback: what is recorded matches what was sent, bytes
//! arrive unchanged, secrets and content never reach the disk, upstream failures reach the
//! client as they would without the proxy.

use std::path::Path;
use std::time::{Duration, Instant};

use reprise_record::salt::Salt;
use reprise_record::{RecordConfig, Recorder};
use reprise_sim::{Faults, Profile, SimConfig, SimServer};
use reprise_trace::{DatasetReader, TraceRecord};
use serde_json::{Value, json};

const KEY: &str = "sk-CANARY-KEY-0123456789";
const PROMPT: &str = "PROMPT-CANARY-TEXT tell me about the weather";

async fn sim(faults: Faults) -> SimServer {
    let mut p = Profile::named("llama-8b-h100").unwrap();
    p.model = "m".into();
    let mut c = SimConfig::new(p);
    c.speedup = 20.0;
    c.faults = faults;
    SimServer::start(c).await.unwrap()
}

async fn recorder(upstream: &str, out: &Path, content: bool) -> Recorder {
    let mut c = RecordConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        upstream,
        out.to_owned(),
        Salt::from_bytes(b"test"),
    );
    c.observe.record_content = content;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.flush_interval = Duration::from_millis(200);
    Recorder::start(c).await.unwrap()
}

fn rows(out: &Path) -> Vec<TraceRecord> {
    let mut r = DatasetReader::<TraceRecord>::open(out)
        .unwrap()
        .read_all()
        .unwrap();
    r.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    r
}

/// What the client saw of one streamed request.
struct Seen {
    ttft: Duration,
    e2e: Duration,
    usage: (u64, u64),
}

async fn stream_chat(client: &reqwest::Client, base: &str, n: u32, user: Option<&str>) -> Seen {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": n, "min_tokens": n, "stream": true,
        "stream_options": {"include_usage": true}, "temperature": 0.3});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    let start = Instant::now();
    let mut resp = client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut ttft = None;
    let mut text = String::new();
    let mut parser = reprise_protocol::sse::SseParser::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        let now = start.elapsed();
        parser
            .feed(&c, |e| {
                let content =
                    reprise_protocol::openai::chunk_facts(&e.data).is_ok_and(|f| f.has_content);
                if content && ttft.is_none() {
                    ttft = Some(now);
                }
            })
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&c));
    }
    let e2e = start.elapsed();
    let usage = text
        .split("data: ")
        .filter_map(|e| serde_json::from_str::<Value>(e.trim()).ok())
        .find_map(|v| {
            let u = v.get("usage")?;
            Some((
                u["prompt_tokens"].as_u64()?,
                u["completion_tokens"].as_u64()?,
            ))
        })
        .expect("usage");
    Seen {
        ttft: ttft.expect("content"),
        e2e,
        usage,
    }
}

/// Waits (up to 10 s: CI machines are slow) until `n` rows are recorded.
async fn wait_recorded(rec: &Recorder, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec
        .counters()
        .recorded
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(
            Instant::now() < deadline,
            "{n} rows not recorded within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn grep_dir(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        // Parquet pages are zstd-compressed: look in the decoded rows as well as the bytes.
        let raw = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        if raw {
            hits.push(p.display().to_string());
        }
    }
    let decoded = format!(
        "{:?}",
        DatasetReader::<TraceRecord>::open(dir).and_then(|r| r.read_all())
    );
    if decoded.contains(needle) {
        hits.push("decoded rows".into());
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_what_the_client_sent_and_saw() {
    let up = sim(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture");
    let rec = recorder(&up.base_url(), &out, false).await;
    let base = format!("http://{}", rec.addr());
    let client = reprise_net::client();
    let mut seen = Vec::new();
    for i in 0..8u32 {
        let user = (i % 2 == 0).then_some("alice");
        seen.push(stream_chat(&client, &base, 5 + i, user).await);
    }
    // Non-streamed, and a path the proxy does not interpret.
    let r = client
        .post(format!("{base}/v1/completions"))
        .body(
            json!({"model": "m", "prompt": "hello there", "max_tokens": 4, "min_tokens": 4})
                .to_string(),
        )
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plain: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let models = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let metrics = client
        .get(format!("http://{}/metrics", rec.admin_addr().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("reprise_record_forwarded_total 10"),
        "{metrics}"
    );
    let summary = rec.shutdown().await;
    assert_eq!((summary.recorded, summary.lost), (10, 0));

    let rows = rows(&out);
    assert_eq!(rows.len(), 10);
    let chat: Vec<&TraceRecord> = rows
        .iter()
        .filter(|r| r.endpoint == "/v1/chat/completions")
        .collect();
    assert_eq!(chat.len(), 8);
    for (r, s) in chat.iter().zip(&seen) {
        assert_eq!(r.status, Some(200));
        assert_eq!(r.model, "m");
        assert!(r.stream);
        assert_eq!(
            (
                u64::from(r.input_tokens.unwrap()),
                u64::from(r.output_tokens.unwrap())
            ),
            s.usage
        );
        assert_eq!(r.input_tokens_source, "usage");
        assert_eq!(
            r.itl_us.as_ref().map_or(0, Vec::len) as u32 + 1,
            r.output_tokens.unwrap()
        );
        assert!(r.prefix_hashes.is_some());
        // The proxy sits between: its TTFT and E2E are a little shorter than the client's.
        let (ttft, e2e) = (
            Duration::from_micros(r.ttft_us.unwrap()),
            Duration::from_micros(r.e2e_us.unwrap()),
        );
        assert!(
            ttft <= s.ttft && s.ttft - ttft < Duration::from_millis(20),
            "{ttft:?} vs {:?}",
            s.ttft
        );
        assert!(
            e2e <= s.e2e && s.e2e - e2e < Duration::from_millis(20),
            "{e2e:?} vs {:?}",
            s.e2e
        );
        let params: Value = serde_json::from_str(r.params.as_deref().unwrap()).unwrap();
        assert_eq!(params["temperature"], 0.3);
    }
    // Same prompt: same prefix hashes; alice's requests share a session, others have none.
    assert_eq!(chat[0].prefix_hashes, chat[1].prefix_hashes);
    assert_eq!(chat[0].session_id, chat[2].session_id);
    assert!(chat[0].session_id.is_some() && chat[1].session_id.is_none());
    let completions = rows
        .iter()
        .find(|r| r.endpoint == "/v1/completions")
        .unwrap();
    assert!(!completions.stream);
    assert_eq!(
        completions.output_tokens.map(u64::from),
        plain["usage"]["completion_tokens"].as_u64()
    );
    let other = rows.iter().find(|r| r.endpoint == "/v1/models").unwrap();
    assert_eq!((other.status, other.input_tokens), (Some(200), None));

    // Nothing secret on disk.
    for needle in [KEY, "PROMPT-CANARY", "alice", "Bearer"] {
        assert_eq!(grep_dir(&out, needle), Vec::<String>::new(), "{needle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_kept_only_when_asked() {
    let up = sim(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture");
    let rec = recorder(&up.base_url(), &out, true).await;
    let client = reprise_net::client();
    stream_chat(&client, &format!("http://{}", rec.addr()), 6, None).await;
    rec.shutdown().await;
    let rows = rows(&out);
    assert_eq!(rows[0].prompt.as_deref(), Some(PROMPT));
    assert_eq!(
        rows[0]
            .completion
            .as_ref()
            .map(|c| c.split_whitespace().count()),
        Some(6)
    );
    assert_eq!(grep_dir(&out, KEY), Vec::<String>::new(), "keys never");
    assert!(!grep_dir(&out, "PROMPT-CANARY").is_empty());
}

/// An upstream with fixed bytes: `/stream` (SSE in pieces, one event split across chunks, a
/// malformed one), `/big` (5 MiB), `/bad` (not JSON).
async fn fixed_upstream() -> (String, Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream_parts: Vec<Vec<u8>> = vec![
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choi"
            .to_vec(),
        b"ces\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n".to_vec(),
        b"data: {broken json\n\n".to_vec(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let big: Vec<u8> = (0..5 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (parts2, big2) = (stream_parts.clone(), big.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (parts, big) = (parts2.clone(), big2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                if text.starts_with("POST /stream") {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await;
                    for p in parts {
                        let _ = s.write_all(format!("{:x}\r\n", p.len()).as_bytes()).await;
                        let _ = s.write_all(&p).await;
                        let _ = s.write_all(b"\r\n").await;
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    let _ = s.write_all(b"0\r\n\r\n").await;
                } else if text.starts_with("POST /big") {
                    let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n", big.len()).as_bytes()).await;
                    let _ = s.write_all(&big).await;
                } else {
                    let body = b"{this is not json";
                    let _ = s.write_all(format!("HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes()).await;
                    let _ = s.write_all(body).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (base, stream_parts.concat(), big)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_through_unchanged_and_chunks_keep_their_timing() {
    let (up, stream_bytes, big) = fixed_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture");
    let rec = recorder(&up, &out, false).await;
    let base = format!("http://{}", rec.addr());
    let client = reprise_net::client();
    let mut r = client
        .post(format!("{base}/stream"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut arrivals = Vec::new();
    let start = Instant::now();
    while let Some(c) = r.chunk().await.unwrap() {
        arrivals.push(start.elapsed());
        got.extend_from_slice(&c);
    }
    assert_eq!(got, stream_bytes, "streamed bytes unchanged");
    assert!(
        arrivals.len() >= 4,
        "chunks are not coalesced: {arrivals:?}"
    );
    let big_got = client
        .post(format!("{base}/big"))
        .body("x")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big_got.len(), big.len());
    assert!(big_got == big, "5 MiB body unchanged");
    let bad = client
        .post(format!("{base}/bad"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 500);
    assert_eq!(bad.bytes().await.unwrap().as_ref(), b"{this is not json");
    rec.shutdown().await;
    let rows = rows(&out);
    assert_eq!(rows.len(), 3);
    let s = rows.iter().find(|r| r.endpoint == "/stream").unwrap();
    assert_eq!(
        s.output_tokens,
        Some(2),
        "two content events; the malformed one is skipped"
    );
    assert_eq!(s.itl_us.as_ref().map(Vec::len), Some(1));
    let gap = s.itl_us.as_ref().unwrap()[0];
    assert!(
        (20_000..200_000).contains(&gap),
        "the second event came 30 ms later: {gap}"
    );
    let b = rows.iter().find(|r| r.endpoint == "/bad").unwrap();
    assert_eq!(
        (b.status, b.failure.as_deref()),
        (Some(500), Some("http_5xx"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reach_the_client_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // Down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let out = dir.path().join("down");
    let rec = recorder(&dead_url, &out, false).await;
    let client = reprise_net::client();
    let r = client
        .post(format!("http://{}/v1/chat/completions", rec.addr()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream"),
        "{body}"
    );
    rec.shutdown().await;
    let down = rows(&out);
    assert_eq!(
        (down[0].status, down[0].failure.as_deref()),
        (Some(502), Some("connect"))
    );

    // A stream cut in the middle: the client's stream breaks too.
    let up = sim(Faults {
        cut_rate: 1.0,
        cut_after_tokens: 3,
        ..Faults::default()
    })
    .await;
    let out = dir.path().join("cut");
    let rec = recorder(&up.base_url(), &out, false).await;
    let mut r = client
        .post(format!("http://{}/v1/chat/completions", rec.addr()))
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    let mut broke = false;
    loop {
        match r.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    rec.shutdown().await;
    let rows = rows(&out);
    assert_eq!(rows.len(), 1);
    // The sim cuts the connection in the middle of the chunked body: the client's read
    // fails as it would against the upstream directly, and the row says why.
    assert!(broke, "the client saw the stream break");
    assert_eq!(rows[0].failure.as_deref(), Some("broken_stream"));
    assert_eq!(rows[0].output_tokens, Some(3), "the tokens that did arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_finished_every_flush_interval_while_running() {
    let up = sim(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture");
    let rec = recorder(&up.base_url(), &out, false).await;
    let client = reprise_net::client();
    let base = format!("http://{}", rec.addr());
    stream_chat(&client, &base, 3, None).await;
    wait_recorded(&rec, 1).await;
    let finished = || {
        std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "parquet")
            })
            .count()
    };
    assert_eq!(
        finished(),
        1,
        "the first row is in a finished part before shutdown"
    );
    assert_eq!(
        rec.counters()
            .recorded
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    stream_chat(&client, &base, 3, None).await;
    wait_recorded(&rec, 2).await;
    assert_eq!(finished(), 2);
    let summary = rec.shutdown().await;
    assert_eq!((summary.recorded, summary.files.len()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_what_is_recorded_and_a_lost_output_does_not_stop_traffic() {
    let up = sim(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture");
    let mut c = RecordConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        up.base_url(),
        out.clone(),
        Salt::from_bytes(b"test"),
    );
    c.paths = vec!["/v1/chat".into()];
    c.flush_interval = Duration::from_millis(100);
    let rec = Recorder::start(c).await.unwrap();
    let base = format!("http://{}", rec.addr());
    let client = reprise_net::client();
    stream_chat(&client, &base, 3, None).await;
    let models = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200, "forwarded, not recorded");
    wait_recorded(&rec, 1).await;
    let counters = rec.counters().clone();
    assert_eq!(
        counters.recorded.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        counters.skipped.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The output directory disappears: traffic keeps flowing, the loss is counted.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, b"now a file").unwrap();
    for _ in 0..3 {
        let s = stream_chat(&client, &base, 3, None).await;
        assert_eq!(s.usage.1, 3);
    }
    let summary = rec.shutdown().await;
    assert_eq!(summary.lost, 3, "{summary:?}");
    assert_eq!(
        counters.failed.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}
