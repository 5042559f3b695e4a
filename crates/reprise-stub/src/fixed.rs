//! A raw HTTP/1.1 endpoint: every request is answered with one fixed body (then the
//! connection is closed), or, silent, accepted and never answered.

use std::io::{Read, Write};

/// The response to every request.
fn response(body: &str, content_type: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `body` as `text/plain` on a thread of its own, forever; returns
/// `http://127.0.0.1:PORT`.
pub fn spawn(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reply = response(&body, "text/plain");
    std::thread::Builder::new()
        .name("stub-fixed".into())
        .spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply.as_bytes());
            }
        })
        .expect("thread");
    format!("http://{addr}")
}

/// An endpoint that accepts connections and never answers (a hung server); returns
/// `http://127.0.0.1:PORT`.
pub fn spawn_silent() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("stub-silent".into())
        .spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        })
        .expect("thread");
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn get(base: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(base.trim_start_matches("http://"))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn fixed_answers_and_silent_does_not() {
        let base = spawn("up 1\n".into());
        let text = get(&base).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nup 1\n"));
        assert!(get(&spawn_silent()).is_err());
    }
}
