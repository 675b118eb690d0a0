//! How `midge sub` prints a message: plain, `-v`, `-x`, `--json`, or a
//! `-F` format with mosquitto_sub's `%` codes and `\` escapes.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use midge_client::Message;

/// How to print each message.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// The payload (`-x`: as hex); `-v`: the topic first.
    Plain { verbose: bool, hex: bool },
    /// One JSON object per message (`--json`, same as `-F %j`).
    Json,
    /// A `-F` format.
    Format(Vec<Piece>),
}

/// A parsed `-F` format: text, or one `%` code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(Vec<u8>),
    Code(char),
}

/// The `%` codes this implementation knows.
const CODES: &str = "%tpqrlxXIUjJPCDEFRS";

/// Parses a `-F` format; an unknown `%` code is a usage error, not a silent blank.
pub(crate) fn parse_format(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = Vec::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let code = chars.next().ok_or("the format ends with a lone %")?;
                if !CODES.contains(code) {
                    return Err(format!("unknown format code %{code} (docs/clients.md lists the codes)"));
                }
                if code == '%' {
                    text.push(b'%');
                } else {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Code(code));
                }
            }
            '\\' => {
                let escaped = match chars.next().ok_or("the format ends with a lone \\")? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'a' => '\x07',
                    'e' => '\x1b',
                    'v' => '\x0b',
                    '0' => '\0',
                    '\\' => '\\',
                    other => return Err(format!("unknown escape \\{other}")),
                };
                text.push(escaped as u8);
            }
            c => {
                let mut buf = [0; 4];
                text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

impl Output {
    /// Appends the message as printed to `out` (without the end of line).
    pub(crate) fn render(&self, message: &Message, out: &mut Vec<u8>) {
        let now = SystemTime::now();
        match self {
            Output::Plain { verbose, hex } => {
                if *verbose {
                    out.extend_from_slice(message.topic.as_bytes());
                    out.push(b' ');
                }
                if *hex {
                    out.extend_from_slice(to_hex(&message.payload, false).as_bytes());
                } else {
                    out.extend_from_slice(&message.payload);
                }
            }
            Output::Json => out.extend_from_slice(json(message, now, false).as_bytes()),
            Output::Format(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.extend_from_slice(text),
                        Piece::Code(code) => code_value(*code, message, now, out),
                    }
                }
            }
        }
    }
}

fn code_value(code: char, m: &Message, now: SystemTime, out: &mut Vec<u8>) {
    let p = &m.properties;
    let text = match code {
        't' => m.topic.clone(),
        'p' => return out.extend_from_slice(&m.payload),
        'q' => (m.qos as u8).to_string(),
        'r' => u8::from(m.retain).to_string(),
        'l' => m.payload.len().to_string(),
        'x' => to_hex(&m.payload, false),
        'X' => to_hex(&m.payload, true),
        'I' => iso8601(now),
        'U' => {
            let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
        }
        'j' => json(m, now, false),
        'J' => json(m, now, true),
        'P' => p.user_properties.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "),
        'C' => p.content_type.clone().unwrap_or_default(),
        'D' => return out.extend_from_slice(p.correlation_data.as_deref().unwrap_or_default()),
        'E' => p.message_expiry_interval.map(|v| v.to_string()).unwrap_or_default(),
        'F' => p.payload_format_indicator.map(|v| v.to_string()).unwrap_or_default(),
        'R' => p.response_topic.clone().unwrap_or_default(),
        'S' => p.subscription_identifiers.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        _ => String::new(),
    };
    out.extend_from_slice(text.as_bytes());
}

fn to_hex(bytes: &[u8], upper: bool) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = if upper { write!(s, "{b:02X}") } else { write!(s, "{b:02x}") };
    }
    s
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// One JSON object: timestamp, topic, QoS, retain, payload length, payload
/// (a string if UTF-8, otherwise `null` with `payload_hex`; with
/// `payload_as_json`, the payload itself when it is valid JSON), and the v5
/// properties that are present.
fn json(m: &Message, now: SystemTime, payload_as_json: bool) -> String {
    let mut s = format!(
        "{{\"tst\":{},\"topic\":{},\"qos\":{},\"retain\":{},\"payloadlen\":{}",
        quoted(&iso8601(now)),
        quoted(&m.topic),
        m.qos as u8,
        u8::from(m.retain),
        m.payload.len()
    );
    let p = &m.properties;
    if let Some(v) = p.payload_format_indicator {
        let _ = write!(s, ",\"payload-format-indicator\":{v}");
    }
    if let Some(v) = p.message_expiry_interval {
        let _ = write!(s, ",\"message-expiry-interval\":{v}");
    }
    if let Some(v) = &p.content_type {
        let _ = write!(s, ",\"content-type\":{}", quoted(v));
    }
    if let Some(v) = &p.response_topic {
        let _ = write!(s, ",\"response-topic\":{}", quoted(v));
    }
    if let Some(v) = &p.correlation_data {
        let _ = write!(s, ",\"correlation-data\":{}", quoted(&String::from_utf8_lossy(v)));
    }
    if !p.subscription_identifiers.is_empty() {
        let ids: Vec<String> = p.subscription_identifiers.iter().map(u32::to_string).collect();
        let _ = write!(s, ",\"subscription-identifiers\":[{}]", ids.join(","));
    }
    if !p.user_properties.is_empty() {
        let pairs: Vec<String> =
            p.user_properties.iter().map(|(k, v)| format!("{{{}:{}}}", quoted(k), quoted(v))).collect();
        let _ = write!(s, ",\"user-properties\":[{}]", pairs.join(","));
    }
    match std::str::from_utf8(&m.payload) {
        Ok(text) if payload_as_json && serde_json::from_str::<serde_json::Value>(text).is_ok() => {
            let _ = write!(s, ",\"payload\":{}", text.trim());
        }
        Ok(text) => {
            let _ = write!(s, ",\"payload\":{}", quoted(text));
        }
        Err(_) => {
            let _ = write!(s, ",\"payload\":null,\"payload_hex\":\"{}\"", to_hex(&m.payload, false));
        }
    }
    s.push('}');
    s
}

/// `2025-01-31T12:34:56.123456Z` (UTC, microseconds).
pub(crate) fn iso8601(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use midge_client::QoS;

    use super::*;

    fn render(output: &Output, message: &Message) -> String {
        let mut out = Vec::new();
        output.render(message, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn format_codes_and_escapes_render_like_mosquitto_sub() {
        let message = Message::new("a/b", "hi").qos(QoS::AtLeastOnce).retain(true);
        let format = Output::Format(parse_format("%t|%p|%q|%r|%l|%x|%X|100%%\\t.").unwrap());
        assert_eq!(render(&format, &message), "a/b|hi|1|1|2|6869|6869|100%\t.");
        assert!(parse_format("%z").is_err());
        assert!(parse_format("50%").is_err());
    }

    #[test]
    fn json_has_the_payload_as_a_string_or_as_json() {
        let message = Message::new("t", "{\"a\":1}");
        let text = render(&Output::Format(parse_format("%J").unwrap()), &message);
        assert!(text.ends_with(",\"payloadlen\":7,\"payload\":{\"a\":1}}"), "{text}");
        let text = render(&Output::Json, &message);
        assert!(text.ends_with(",\"payload\":\"{\\\"a\\\":1}\"}"), "{text}");
        let binary = Message::new("t", vec![0xff, 0x00]);
        assert!(render(&Output::Json, &binary).ends_with("\"payload\":null,\"payload_hex\":\"ff00\"}"));
    }

    #[test]
    fn timestamps_are_utc_iso8601() {
        let t = UNIX_EPOCH + Duration::from_micros(951_827_696_000_001);
        assert_eq!(iso8601(t), "2000-02-29T12:34:56.000001Z");
    }
}
