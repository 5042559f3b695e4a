//! Events during a run: an HTTP call or a command at a given offset (a model reload, a
//! scale-out, a config switch), recorded with its times so the analyzer can show the
//! windows before, during and after it.

use std::time::Duration;

use serde::Serialize;

/// What an event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// An HTTP request.
    Http {
        /// Method, e.g. `POST`.
        method: String,
        /// URL.
        url: String,
        /// Body (JSON or text), if any.
        body: Option<String>,
    },
    /// A shell command (`sh -c`).
    Command(String),
}

/// An event at an offset from the run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvent {
    /// When, from the run's start.
    pub offset: Duration,
    /// What.
    pub action: EventAction,
}

impl RunEvent {
    /// Parses `SECONDS=METHOD URL [BODY]` (HTTP) — `{target}` in the URL becomes the first
    /// target's base URL.
    pub fn parse_http(text: &str, target: &str) -> Result<RunEvent, String> {
        let (offset, rest) = split_offset(text)?;
        let mut parts = rest.trim().splitn(3, ' ');
        let method = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or("expected `SECONDS=METHOD URL [BODY]`")?;
        let url = parts
            .next()
            .ok_or("expected `SECONDS=METHOD URL [BODY]`")?
            .replace("{target}", target);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        let body = parts.next().map(str::to_owned);
        Ok(RunEvent {
            offset,
            action: EventAction::Http {
                method: method.to_uppercase(),
                url,
                body,
            },
        })
    }

    /// Parses `SECONDS=COMMAND`.
    pub fn parse_command(text: &str) -> Result<RunEvent, String> {
        let (offset, rest) = split_offset(text)?;
        if rest.trim().is_empty() {
            return Err("expected `SECONDS=COMMAND`".into());
        }
        Ok(RunEvent {
            offset,
            action: EventAction::Command(rest.trim().to_owned()),
        })
    }

    /// A short description.
    pub fn describe(&self) -> String {
        match &self.action {
            EventAction::Http { method, url, .. } => format!("{method} {url}"),
            EventAction::Command(c) => c.clone(),
        }
    }
}

fn split_offset(text: &str) -> Result<(Duration, &str), String> {
    let (secs, rest) = text.split_once('=').ok_or("expected `SECONDS=...`")?;
    let secs: f64 = secs
        .trim()
        .parse()
        .map_err(|_| format!("`{secs}` is not a number of seconds"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("`{secs}` is not a number of seconds"));
    }
    Ok((Duration::from_secs_f64(secs), rest))
}

/// What happened when an event ran (times in ns since the Unix epoch, UTC).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRecord {
    /// Offset from the run's start, seconds.
    pub offset_s: f64,
    /// What it did.
    pub action: String,
    /// When it started.
    pub started_ns: i64,
    /// When it finished.
    pub finished_ns: i64,
    /// Whether it succeeded (2xx, or exit status 0).
    pub ok: bool,
    /// Status line, exit status or error.
    pub detail: String,
}

/// Runs one event's action; returns (ok, detail).
pub async fn execute(client: &reqwest::Client, action: &EventAction) -> (bool, String) {
    match action {
        EventAction::Http { method, url, body } => {
            let method = match reqwest::Method::from_bytes(method.as_bytes()) {
                Ok(m) => m,
                Err(e) => return (false, e.to_string()),
            };
            let mut req = client.request(method, url).timeout(Duration::from_secs(60));
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(r) => (
                    r.status().is_success(),
                    format!("HTTP {}", r.status().as_u16()),
                ),
                Err(e) => (false, e.to_string()),
            }
        }
        EventAction::Command(cmd) => match tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
        {
            Ok(s) => (
                s.success(),
                format!(
                    "exit status {}",
                    s.code().map_or("signal".into(), |c| c.to_string())
                ),
            ),
            Err(e) => (false, e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_command_events() {
        let e = RunEvent::parse_http(
            r#"2.5=post {target}/admin/reload {"seconds": 5}"#,
            "http://h:1",
        )
        .unwrap();
        assert_eq!(e.offset, Duration::from_millis(2500));
        assert_eq!(
            e.action,
            EventAction::Http {
                method: "POST".into(),
                url: "http://h:1/admin/reload".into(),
                body: Some(r#"{"seconds": 5}"#.into())
            }
        );
        assert!(RunEvent::parse_http("x=GET http://a", "").is_err());
        assert!(RunEvent::parse_http("1=GET ftp://a", "").is_err());
        let c = RunEvent::parse_command("10=kubectl scale --replicas=2 deploy/vllm").unwrap();
        assert_eq!(
            c.action,
            EventAction::Command("kubectl scale --replicas=2 deploy/vllm".into())
        );
    }
}
