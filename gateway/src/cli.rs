//! `causeway link` and `causeway mirror`: the admin API's link and mirror
//! operations from a shell, printed as tables (or as the API's JSON with `--json`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the admin API is and how to get in.
pub struct Target {
    /// HOST:PORT, with or without `http://`.
    pub admin: String,
    pub token: Option<String>,
}

/// One request to the admin API: the status and the JSON answer.
pub async fn call(target: &Target, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let addr = target.admin.trim_start_matches("http://").trim_end_matches('/');
    if addr.starts_with("https://") {
        return Err("the command line speaks plain HTTP to the admin endpoint; run it where the endpoint listens without TLS (e.g. on localhost), or use curl".into());
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot reach the admin endpoint at {addr}: timed out"))?
        .map_err(|e| format!("cannot reach the admin endpoint at {addr}: {e} (set --admin or CAUSEWAY_ADMIN)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin endpoint at {addr}: {e}"))?;
    tokio::spawn(conn);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = &target.token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(payload))).map_err(|e| e.to_string())?;
    // Promote and pause wait for in-flight writes to settle.
    let resp = tokio::time::timeout(Duration::from_secs(120), sender.send_request(req))
        .await
        .map_err(|_| "the admin endpoint did not answer within 120 s".to_string())?
        .map_err(|e| format!("admin endpoint at {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin endpoint at {addr}: {e}"))?
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).trim().to_string()));
    Ok((status, value))
}

/// The message of an error answer.
pub fn error_of(status: u16, v: &Value) -> String {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => e.to_string(),
        None => format!("HTTP {status}: {v}"),
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Rows as a table with a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn links_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("links")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|l| vec![s(l, "name"), s(l, "source"), s(l, "destination"), s(l, "mirror_count")]).collect())
        .unwrap_or_default();
    table(&["NAME", "SOURCE", "DESTINATION", "MIRRORS"], &rows)
}

/// `causeway tunnel status`: one row per connection (or on-prem slot).
pub fn tunnel_table(v: &Value) -> String {
    let ms = |c: &Value, k: &str| match c.get(k).and_then(Value::as_f64) {
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = v
        .get("connections")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    let clusters = c
                        .get("clusters")
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    let up = c.get("connected_for_ms").and_then(Value::as_u64).map(|m| format!("{}s", m / 1000));
                    vec![
                        s(c, "peer"),
                        s(c, "slot"),
                        s(c, "state"),
                        clusters,
                        up.unwrap_or_else(|| "-".into()),
                        ms(c, "rtt_ms"),
                        s(c, "lost_packets"),
                        s(c, "open_streams"),
                        s(c, "reconnects"),
                        s(c, "last_error"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let role = v.get("role").and_then(Value::as_str).unwrap_or("?");
    format!(
        "role: {role}\n{}",
        table(&["PEER", "SLOT", "STATE", "CLUSTERS", "UP", "RTT_MS", "LOST", "STREAMS", "RECONNECTS", "LAST_ERROR"], &rows)
    )
}

pub fn link_text(l: &Value) -> String {
    let mut out = format!(
        "link {}: {} -> {}\n",
        s(l, "name"),
        s(l, "source"),
        s(l, "destination")
    );
    if let Some(config) = l.get("config").and_then(Value::as_object) {
        for (k, v) in config {
            out.push_str(&format!("  {k} = {}\n", v.as_str().map_or_else(|| v.to_string(), str::to_string)));
        }
    }
    if let Some(m) = l.get("mirrors") {
        out.push('\n');
        out.push_str(&mirrors_table(&serde_json::json!({ "mirrors": m })));
    }
    out
}

pub fn mirrors_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .get("mirrors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    vec![
                        s(m, "name"),
                        s(m, "link"),
                        s(m, "source_topic"),
                        s(m, "state"),
                        s(m, "lag"),
                        s(m, "lag_ms"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["NAME", "LINK", "SOURCE TOPIC", "STATE", "LAG", "LAG MS"], &rows)
}

pub fn mirror_text(m: &Value) -> String {
    let mut out = format!(
        "mirror {} of {} over link {}: {}",
        s(m, "name"),
        s(m, "source_topic"),
        s(m, "link"),
        s(m, "state")
    );
    if let Some(r) = m.get("reason").and_then(Value::as_str) {
        out.push_str(&format!(" ({r})"));
    }
    out.push_str(&format!("\n  lag {} records, {} ms\n", s(m, "lag"), s(m, "lag_ms")));
    if let Some(parts) = m.get("partitions").and_then(Value::as_array) {
        let rows: Vec<Vec<String>> = parts
            .iter()
            .map(|p| {
                vec![
                    s(p, "partition"),
                    s(p, "state"),
                    s(p, "mirrored_to"),
                    s(p, "source_end"),
                    s(p, "lag"),
                    s(p, "lag_ms"),
                    s(p, "records"),
                    s(p, "last_error"),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["PARTITION", "STATE", "MIRRORED TO", "SOURCE END", "LAG", "LAG MS", "RECORDS", "LAST ERROR"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_show_missing_values_as_dashes() {
        let v = serde_json::json!({"mirrors": [
            {"name": "dr.orders", "link": "dr", "source_topic": "orders", "state": "ACTIVE", "lag": 0, "lag_ms": 0},
            {"name": "x", "link": "dr", "source_topic": "y", "state": "FAILED", "lag": null, "lag_ms": 12},
        ]});
        let t = mirrors_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME       LINK  SOURCE TOPIC  STATE   LAG  LAG MS");
        assert_eq!(lines[1], "dr.orders  dr    orders        ACTIVE  0    0");
        assert_eq!(lines[2], "x          dr    y             FAILED  -    12");
    }
}
