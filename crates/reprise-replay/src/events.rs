//! Events during a run: an HTTP call or a command at a given offset (a model reload, a
//! scale-out, a config switch), recorded with its times so the analyzer can show the
//! windows before, during and after it.

use std::time::Duration;

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
        Ok(Self::parse_http_template(text)?.bind_target(target))
    }

    /// Parses `SECONDS=METHOD URL [BODY]` (HTTP), keeping `{target}` in the URL for
    /// [`RunEvent::bind_target`] once the targets are known.
    pub fn parse_http_template(text: &str) -> Result<RunEvent, String> {
        let (offset, rest) = split_offset(text)?;
        let mut parts = rest.trim().splitn(3, ' ');
        let method = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or("expected `SECONDS=METHOD URL [BODY]`")?;
        let url = parts
            .next()
            .ok_or("expected `SECONDS=METHOD URL [BODY]`")?
            .to_owned();
        let checked = url.replace("{target}", "http://target");
        if !(checked.starts_with("http://") || checked.starts_with("https://")) {
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

    /// Replaces `{target}` in an HTTP event's URL with `target` (a base URL).
    pub fn bind_target(mut self, target: &str) -> RunEvent {
        if let EventAction::Http { url, .. } = &mut self.action {
            *url = url.replace("{target}", target);
        }
        self
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

pub use reprise_trace::run::EventRecord;

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
        // On a blocking thread of the runtime rather than through tokio's process driver:
        // that driver looks for exited children every time a runtime parks, which the
        // forwarding and pacing threads would pay for on every wake-up.
        EventAction::Command(cmd) => match tokio::task::spawn_blocking({
            let cmd = cmd.clone();
            move || std::process::Command::new("sh").arg("-c").arg(cmd).status()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
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

    #[tokio::test(flavor = "current_thread")]
    async fn commands_run_through_the_shell_and_report_their_status() {
        let client = reprise_net::client_builder().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let ok = EventAction::Command(format!("echo hi > '{}'", marker.display()));
        assert_eq!(execute(&client, &ok).await, (true, "exit status 0".into()));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hi\n");
        let failing = EventAction::Command("exit 3".into());
        assert_eq!(
            execute(&client, &failing).await,
            (false, "exit status 3".into())
        );
    }

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
