//! What a replay sends to: the in-process simulator with a profile, or a server's base URL.
//!
//! `--target` is parsed once, here, into a [`Target`]. Users write a target the way oha,
//! Locust, curl and the OpenAI SDKs taught them: a base URL (`http://host:8000`), an SDK base
//! (`http://host:8000/v1`) or a full endpoint (`http://host:8000/v1/chat/completions`). The
//! last two are split into the base URL and, for an endpoint, the API it names, and
//! [`ParsedTarget::note`] says so in one line. A path that is neither stays a prefix (a
//! gateway that serves the API under `/llm` gets `/llm/v1/chat/completions`).

use std::fmt;
use std::time::Duration;

use reprise_protocol::openai::Api;

/// The built-in simulator profile used when a target names none.
pub const DEFAULT_SIM_PROFILE: &str = "llama-8b-h100";

/// A replay target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The in-process simulator with a named profile.
    Sim {
        /// Profile name (see `reprise sim --help`).
        profile: String,
    },
    /// A server, by base URL without a trailing slash (`http://127.0.0.1:8000`).
    Url {
        /// Base URL; the API path is appended to it.
        base: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Sim { profile } => write!(f, "sim:{profile}"),
            Target::Url { base } => f.write_str(base),
        }
    }
}

/// A parsed `--target`: the target, the API its URL named (if any) and what was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTarget {
    /// The target.
    pub target: Target,
    /// The API named by the URL's path (`.../v1/chat/completions`, `.../v1/completions`).
    pub api: Option<Api>,
    /// One line for stderr when the URL was split (what was taken as base and API).
    pub note: Option<String>,
}

/// A target that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither a URL nor `sim[:PROFILE]`.
    #[error("target `{0}`: expected http(s)://host:port, a full endpoint URL, or sim[:PROFILE]")]
    Syntax(String),
    /// An unparsable URL.
    #[error("target `{text}`: {reason}")]
    Url {
        /// What was given.
        text: String,
        /// Why it is not a URL.
        reason: String,
    },
    /// A query string or fragment, which the request URL cannot carry.
    #[error("target `{0}`: a query string or fragment cannot be part of a target URL")]
    Query(String),
    /// Nothing listens at the target's address.
    #[error("target {target}: cannot connect to {address}: {reason}")]
    Unreachable {
        /// The target.
        target: String,
        /// host:port tried.
        address: String,
        /// The cause (connection refused, timed out, no such host).
        reason: String,
    },
}

/// The endpoint paths recognised at the end of a target URL, with their API.
const ENDPOINTS: [(&str, Api); 4] = [
    ("/v1/chat/completions", Api::Chat),
    ("/v1/completions", Api::Completions),
    ("/chat/completions", Api::Chat),
    ("/completions", Api::Completions),
];

/// Parses one `--target`.
pub fn parse_target(text: &str) -> Result<ParsedTarget, TargetError> {
    let text = text.trim();
    if text == "sim" {
        return Ok(ParsedTarget {
            target: Target::Sim {
                profile: DEFAULT_SIM_PROFILE.to_owned(),
            },
            api: None,
            note: None,
        });
    }
    if let Some(profile) = text.strip_prefix("sim:") {
        return Ok(ParsedTarget {
            target: Target::Sim {
                profile: profile.to_owned(),
            },
            api: None,
            note: None,
        });
    }
    if !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err(TargetError::Syntax(text.to_owned()));
    }
    let url = reqwest::Url::parse(text).map_err(|e| TargetError::Url {
        text: text.to_owned(),
        reason: e.to_string(),
    })?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(TargetError::Url {
            text: text.to_owned(),
            reason: "no host".into(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(TargetError::Query(text.to_owned()));
    }
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let (prefix, api) = match ENDPOINTS.iter().find(|(p, _)| path.ends_with(p)) {
        Some((p, api)) => (&path[..path.len() - p.len()], Some(*api)),
        None => (path, None),
    };
    // An OpenAI SDK base URL ends in /v1; the API paths reprise sends to start with it.
    let prefix = prefix.strip_suffix("/v1").unwrap_or(prefix);
    let base = format!("{origin}{prefix}");
    let note = if path.is_empty() || path == prefix {
        None
    } else {
        Some(match api {
            Some(api) => format!(
                "target {text}: base URL {base}, API {} (from the URL)",
                api.path()
            ),
            None => format!("target {text}: base URL {base} (requests go to {base}/v1/...)"),
        })
    };
    Ok(ParsedTarget {
        target: Target::Url { base },
        api,
        note,
    })
}

/// Checks that something accepts connections at a URL target's address (a TCP connect, no
/// request: a capture proxy in front of the server records nothing). Simulators pass.
pub async fn check_reachable(target: &Target, timeout: Duration) -> Result<(), TargetError> {
    let Target::Url { base } = target else {
        return Ok(());
    };
    let url = reqwest::Url::parse(base).map_err(|e| TargetError::Url {
        text: base.clone(),
        reason: e.to_string(),
    })?;
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    // IPv6 literals keep their brackets in host_str.
    let address = format!("{host}:{port}");
    let unreachable = |reason: String| TargetError::Unreachable {
        target: base.clone(),
        address: address.clone(),
        reason,
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> (String, Option<Api>, bool) {
        let p = parse_target(text).unwrap();
        match p.target {
            Target::Url { base } => (base, p.api, p.note.is_some()),
            Target::Sim { .. } => panic!("not a URL"),
        }
    }

    #[test]
    fn sim_targets_name_their_profile() {
        let p = parse_target("sim").unwrap();
        assert_eq!(p.target.to_string(), "sim:llama-8b-h100");
        assert_eq!(
            parse_target("sim:instant").unwrap().target,
            Target::Sim {
                profile: "instant".into()
            }
        );
    }

    #[test]
    fn base_urls_stay_as_given_without_a_note() {
        assert_eq!(
            url("http://127.0.0.1:8000"),
            ("http://127.0.0.1:8000".into(), None, false)
        );
        assert_eq!(
            url("http://127.0.0.1:8000/"),
            ("http://127.0.0.1:8000".into(), None, false)
        );
        assert_eq!(
            url("https://api.example.com"),
            ("https://api.example.com".into(), None, false)
        );
    }

    #[test]
    fn endpoint_urls_are_split_into_base_and_api() {
        assert_eq!(
            url("http://host:8000/v1/chat/completions"),
            ("http://host:8000".into(), Some(Api::Chat), true)
        );
        assert_eq!(
            url("http://host:8000/v1/completions/"),
            ("http://host:8000".into(), Some(Api::Completions), true)
        );
        assert_eq!(
            url("http://host:8000/llm/v1/chat/completions"),
            ("http://host:8000/llm".into(), Some(Api::Chat), true)
        );
        let note = parse_target("http://host:8000/v1/chat/completions")
            .unwrap()
            .note
            .unwrap();
        assert_eq!(
            note,
            "target http://host:8000/v1/chat/completions: base URL http://host:8000, API /v1/chat/completions (from the URL)"
        );
    }

    #[test]
    fn sdk_bases_and_prefixes() {
        assert_eq!(
            url("http://host:8000/v1"),
            ("http://host:8000".into(), None, true)
        );
        assert_eq!(
            url("http://host:8000/gateway"),
            ("http://host:8000/gateway".into(), None, false)
        );
    }

    #[test]
    fn bad_targets_say_what_is_expected() {
        let e = parse_target("localhost:8000").unwrap_err().to_string();
        assert_eq!(
            e,
            "target `localhost:8000`: expected http(s)://host:port, a full endpoint URL, or sim[:PROFILE]"
        );
        assert!(matches!(
            parse_target("http://h:1/v1?x=1"),
            Err(TargetError::Query(_))
        ));
        assert!(matches!(
            parse_target("http://:80"),
            Err(TargetError::Url { .. })
        ));
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_an_open_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Target::Url {
            base: format!("http://127.0.0.1:{port}"),
        };
        check_reachable(&open, Duration::from_secs(2))
            .await
            .unwrap();
        drop(listener);
        let e = check_reachable(&open, Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "target http://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}:"
            )) && e.contains("refused"),
            "{e}"
        );
    }
}
