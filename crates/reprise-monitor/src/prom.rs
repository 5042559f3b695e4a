//! A parser for the Prometheus text exposition format (0.0.4, and OpenMetrics' `# EOF`):
//! what vLLM, SGLang, TGI, Triton, llama.cpp, DCGM-exporter and node-exporter serve on
//! `/metrics`. Input is untrusted: any malformed line is an error naming its line number
//! (the whole scrape is then discarded, as Prometheus does), never a panic.

use std::fmt;

/// One sample: `name{labels} value [timestamp_ms]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (histogram series keep their `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// Value (`+Inf`, `-Inf` and `NaN` allowed).
    pub value: f64,
    /// The exposition's own timestamp, ms since the epoch, when given.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The labels as a JSON object (the `labels` column of server/1).
    pub fn labels_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    is_name_start(c) || c.is_ascii_digit()
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })?);
    }
    Ok(out)
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("not a number: {:?}", truncate(s))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let b = line.as_bytes();
    if !is_name_start(b[0]) {
        return Err(format!("bad metric name at {:?}", truncate(line)));
    }
    let mut i = 1;
    while i < b.len() && is_name_char(b[i]) {
        i += 1;
    }
    let name = line[..i].to_owned();
    let mut labels = Vec::new();
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() {
                return Err("unterminated label set".into());
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            let start = i;
            if !is_name_start(b[i]) {
                return Err(format!("bad label name in {:?}", truncate(&line[start..])));
            }
            while i < b.len() && is_name_char(b[i]) {
                i += 1;
            }
            let key = line[start..i].to_owned();
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i + 1 >= b.len() || b[i] != b'=' || b[i + 1] != b'"' {
                return Err(format!("label {key} has no quoted value"));
            }
            i += 2;
            let mut value = String::new();
            loop {
                let Some(&c) = b.get(i) else {
                    return Err(format!("label {key}: unterminated value"));
                };
                match c {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        match b.get(i + 1) {
                            Some(b'n') => value.push('\n'),
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            _ => return Err(format!("label {key}: bad escape")),
                        }
                        i += 2;
                    }
                    _ => {
                        // Copy one UTF-8 character.
                        let ch = line[i..].chars().next().expect("in bounds");
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            labels.push((key, value));
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } in the label set".into()),
            }
        }
    }
    let rest = line[i..].trim();
    if rest.is_empty() {
        return Err(format!("{name}: no value"));
    }
    let mut parts = rest.split_ascii_whitespace();
    let value = parse_value(parts.next().expect("non-empty"))?;
    let timestamp_ms = match parts.next() {
        Some(t) => Some(
            t.parse::<i64>()
                .or_else(|_| t.parse::<f64>().map(|s| (s * 1000.0) as i64))
                .map_err(|_| format!("bad timestamp {:?}", truncate(t)))?,
        ),
        None => None,
    };
    if parts.next().is_some() {
        return Err(format!("{name}: trailing text"));
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_servers_expose() {
        let text = r#"# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 12
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1",Hostname="h"} 87
node_network_receive_bytes_total{device="eth0"} 1.2e+09 1700000000000
tgi_queue_size 0
weird{a="x\"y\\z\nw", b="é",} NaN
up -Inf
# EOF
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s[0].name, "vllm:num_requests_waiting");
        assert_eq!(s[0].labels, vec![("model_name".into(), "m".into())]);
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[2].label("UUID"), Some("GPU-1"));
        assert_eq!(s[3].value, 1.2e9);
        assert_eq!(s[3].timestamp_ms, Some(1_700_000_000_000));
        assert_eq!((s[4].labels.len(), s[4].value), (0, 0.0));
        assert_eq!(s[5].label("a"), Some("x\"y\\z\nw"));
        assert_eq!(s[5].label("b"), Some("é"));
        assert!(s[5].value.is_nan());
        assert_eq!(s[6].value, f64::NEG_INFINITY);
        assert_eq!(s[0].labels_json(), r#"{"model_name":"m"}"#);
    }

    #[test]
    fn malformed_lines_name_their_number() {
        for (text, line) in [
            ("ok 1\n{x=\"1\"} 2\n", 2),
            ("a{b=\"1\" 2\n", 1),
            ("a{b=1} 2\n", 1),
            ("\n\na{b=\"1\"}\n", 3),
            ("a notanumber\n", 1),
            ("a 1 2 3\n", 1),
            ("a{b=\"\\q\"} 1\n", 1),
            ("a{b=\"1\"", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "[^\"\\\\\n]{0,12}"), 0..4),
            value in -1e12f64..1e12,
        ) {
            let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let line = if labels.is_empty() {
                format!("{name} {value}")
            } else {
                format!("{name}{{{}}} {value}", body.join(","))
            };
            let s = parse(&line).unwrap();
            prop_assert_eq!(s.len(), 1);
            prop_assert_eq!(&s[0].name, &name);
            prop_assert_eq!(&s[0].labels, &labels);
            prop_assert_eq!(s[0].value, value);
        }
    }
}
