//! The lean HTTP/1.1 client against purpose-built servers on loopback: connection reuse,
//! servers that close kept-alive connections silently, every body framing, and the
//! request bytes it writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reprise_net::h1::{H1Error, RequestOptions, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request (head and content-length body); `None` at end of file.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut more = [0u8; 4096];
                let n = s.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            let request = String::from_utf8_lossy(&buf[..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some(request);
        }
        let mut more = [0u8; 4096];
        let n = s.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

/// A server answering every request with `response`; closes after each when `close`.
/// Returns its URL, the connections accepted and the requests seen (last one kept).
async fn server(
    response: &'static [u8],
    close: bool,
) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(String::new()));
    let (a, l) = (accepted.clone(), last.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let l = l.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut s, &mut buf).await {
                    *l.lock().unwrap() = req;
                    if s.write_all(response).await.is_err() {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted, last)
}

async fn body_of(target: &Arc<Target>, req: &[u8]) -> Result<(u16, Vec<u8>), H1Error> {
    let mut r = target.send(req).await?;
    let status = r.status();
    let mut all = Vec::new();
    while let Some(c) = r.chunk().await? {
        all.extend_from_slice(&c);
    }
    Ok((status, all))
}

#[tokio::test]
async fn kept_alive_connections_are_reused_and_requests_are_exact() {
    let (url, accepted, last) = server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        false,
    )
    .await;
    let target = Arc::new(
        Target::new(
            &url.parse().unwrap(),
            &[("authorization".into(), "Bearer k".into())],
        )
        .unwrap(),
    );
    for _ in 0..20 {
        let (status, body) = body_of(&target, b"{\"prompt\":\"hi\"}").await.unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"{\"ok\":true}"[..]));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(target.idle(), 1);
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches("/v1/completions");
    assert_eq!(
        *last.lock().unwrap(),
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer k\r\n\
             accept: */*\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n\
             {{\"prompt\":\"hi\"}}"
        )
    );
}

#[tokio::test]
async fn a_server_that_closes_silently_after_each_response_costs_no_request() {
    // Like llama.cpp's server after a stream: kept alive by the headers, closed anyway.
    let (url, accepted, _) = server(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    )
    .await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    for _ in 0..10 {
        let (_, body) = body_of(&target, b"{}").await.unwrap();
        assert_eq!(body, b"hello");
        // Give the close time to arrive before the next checkout.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn bodies_read_to_close_and_connection_close_are_not_pooled() {
    let (url, accepted, _) = server(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: [DONE]\n\n",
        true,
    )
    .await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    for _ in 0..3 {
        let (_, body) = body_of(&target, b"{}").await.unwrap();
        assert_eq!(body, b"data: [DONE]\n\n");
        assert_eq!(target.idle(), 0);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    let (url, accepted, _) = server(
        b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy",
        false,
    )
    .await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    for _ in 0..3 {
        assert_eq!(
            body_of(&target, b"{}").await.unwrap(),
            (503, b"busy".to_vec())
        );
    }
    assert_eq!((accepted.load(Ordering::SeqCst), target.idle()), (3, 0));
}

#[tokio::test]
async fn broken_bodies_and_heads_are_errors_of_their_class() {
    let (url, _, _) = server(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        true,
    )
    .await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    assert!(matches!(
        body_of(&target, b"{}").await,
        Err(H1Error::Body(_))
    ));

    let (url, _, _) = server(b"SMTP ready\r\n\r\n", true).await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    assert!(matches!(
        body_of(&target, b"{}").await,
        Err(H1Error::Protocol(_))
    ));

    let (url, _, _) = server(b"", true).await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    let e = body_of(&target, b"{}").await.unwrap_err();
    assert!(
        matches!(&e, H1Error::Transport(m) if m.contains("closed the connection before")),
        "{e}"
    );
    assert!(Target::new(&"https://x/".parse().unwrap(), &[]).is_none());
}

#[tokio::test]
async fn caller_formatted_requests_give_their_header_fields_and_reuse_the_pool() {
    let (url, accepted, last) = server(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: abc\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let target = Arc::new(
        Target::new(&url.parse().unwrap(), &[])
            .unwrap()
            .with_connect_timeout(std::time::Duration::from_secs(5)),
    );
    assert_eq!(format!("http://{}/v1/completions", target.authority()), url);
    let keep = RequestOptions {
        keep_head: true,
        ..RequestOptions::default()
    };
    for i in 0..3 {
        let request = format!(
            "POST /llm/v1/chat/completions?x={i} HTTP/1.1\r\nhost: up\r\nx-session: s\r\n\
             content-length: 2\r\n\r\n{{}}"
        );
        let mut r = target.send_request(request.as_bytes(), keep).await.unwrap();
        let mut fields = Vec::new();
        r.headers(|k, v| fields.push(format!("{k}={}", String::from_utf8_lossy(v))));
        assert_eq!(
            fields,
            [
                "content-type=text/event-stream",
                "x-request-id=abc",
                "transfer-encoding=chunked"
            ]
        );
        // Read by polling, as a response body is.
        let mut body = Vec::new();
        while let Some(c) = std::future::poll_fn(|cx| r.poll_chunk(cx)).await.unwrap() {
            body.extend_from_slice(&c);
        }
        assert!(r.is_finished());
        assert_eq!(body, b"hello");
        assert_eq!(*last.lock().unwrap(), request);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(target.idle(), 1);
}

#[tokio::test]
async fn a_response_to_head_has_no_body_whatever_its_length_says() {
    let (url, accepted, _) =
        server(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n", false).await;
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    let head = RequestOptions {
        head_only: true,
        ..RequestOptions::default()
    };
    for _ in 0..3 {
        let mut r = target
            .send_request(b"HEAD /v1/models HTTP/1.1\r\nhost: up\r\n\r\n", head)
            .await
            .unwrap();
        // Without keep_head, no header fields are kept.
        let mut n = 0;
        r.headers(|_, _| n += 1);
        assert_eq!((r.status(), n), (200, 0));
        assert!(r.chunk().await.unwrap().is_none());
    }
    // The connection went back to the pool each time.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A body much larger than a read, written as fast as the server can, read on a runtime
/// whose reactor may run on another worker between a read and the next wait: every byte
/// arrives (a readiness cleared after a short read must never hide data that came after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_read_in_short_reads_arrives_whole() {
    const LEN: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/completions", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
            for _ in 0..LEN / block.len() {
                // Small writes with yields between them: many short reads on the other side.
                for piece in block.chunks(1500) {
                    s.write_all(piece).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }
    });
    let target = Arc::new(Target::new(&url.parse().unwrap(), &[]).unwrap());
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), body_of(&target, b"{}"))
        .await
        .expect("the whole body within 60 s")
        .unwrap();
    assert_eq!(got.1.len(), LEN);
    assert!(
        got.1
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % (64 * 1024)) % 251) as u8)
    );
}
