//! The built-in worker's access log (`handoff run --access-log combined|json`): one line
//! per request on the worker's standard output, which is the master's (redirect it to a
//! file, or let journald or the container runtime collect it). Off by default.
//!
//! `combined` is the format nginx and Apache call so, which log tools read as is;
//! `json` is one object per line. Each line goes out in one `write`, so lines of
//! different workers never interleave; the write blocks if the output does (as nginx's
//! file writes do), so a reader that stops reading slows the worker that logs.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, Uri, Version};

pub(crate) use crate::wire::ENV_ACCESS_LOG;

/// An access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLog {
    /// nginx's and Apache's `combined`.
    Combined,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for AccessLog {
    type Err = String;
    fn from_str(s: &str) -> Result<AccessLog, String> {
        match s {
            "combined" => Ok(AccessLog::Combined),
            "json" => Ok(AccessLog::Json),
            _ => Err(format!("unknown access log format {s:?}; choose combined or json")),
        }
    }
}

impl AccessLog {
    /// The name on the command line and in `HANDOFF_ACCESS_LOG`.
    pub fn name(self) -> &'static str {
        match self {
            AccessLog::Combined => "combined",
            AccessLog::Json => "json",
        }
    }

    /// The format the master asked for, if any.
    pub fn from_env() -> Option<AccessLog> {
        std::env::var(ENV_ACCESS_LOG).ok()?.parse().ok()
    }
}

/// What one line says about one request.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub(crate) client: Option<SocketAddr>,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) bytes: Option<u64>,
    pub(crate) referer: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
    pub(crate) worker: usize,
    pub(crate) took: Duration,
}

impl Entry<'_> {
    /// The line, with its newline.
    pub(crate) fn format(&self, format: AccessLog, at: SystemTime) -> String {
        let client = self.client.map(|c| c.ip().to_string()).unwrap_or_else(|| "-".into());
        let version = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            _ => "HTTP/?",
        };
        match format {
            AccessLog::Combined => {
                let quoted = |v: Option<&str>| v.map(escape).unwrap_or_else(|| "-".into());
                format!(
                    "{client} - - [{}] \"{} {} {version}\" {} {} \"{}\" \"{}\"\n",
                    clf_time(at),
                    self.method,
                    escape(&self.uri.to_string()),
                    self.status,
                    self.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                    quoted(self.referer),
                    quoted(self.user_agent),
                )
            }
            AccessLog::Json => {
                let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                let v = serde_json::json!({
                    "time": secs,
                    "client": self.client.map(|c| c.ip().to_string()),
                    "method": self.method.as_str(),
                    "uri": self.uri.to_string(),
                    "version": version,
                    "status": self.status,
                    "bytes": self.bytes,
                    "referer": self.referer,
                    "user_agent": self.user_agent,
                    "worker": self.worker,
                    "duration_ms": self.took.as_secs_f64() * 1000.0,
                });
                format!("{v}\n")
            }
        }
    }
}

/// Writes one line to standard output in one `write` (lines of several workers never
/// mix); a failure to log does not fail the request.
pub(crate) fn write(line: &str) {
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// Quotes and control characters escaped, as nginx does (`\xHH`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000`, the common log format's time, in UTC.
fn clf_time(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(method: &'a Method, uri: &'a Uri) -> Entry<'a> {
        Entry {
            client: Some("192.0.2.7:5555".parse().unwrap()),
            method,
            uri,
            version: Version::HTTP_11,
            status: 200,
            bytes: Some(42),
            referer: None,
            user_agent: Some("curl/8 \"x\""),
            worker: 1,
            took: Duration::from_micros(1500),
        }
    }

    #[test]
    fn combined_is_the_common_format_with_referer_and_agent() {
        let (m, u) = (Method::GET, "/a?b=1".parse::<Uri>().unwrap());
        let at = UNIX_EPOCH + Duration::from_secs(971_185_336); // 2000-10-10 13:42:16 UTC
        let line = entry(&m, &u).format(AccessLog::Combined, at);
        assert_eq!(
            line,
            "192.0.2.7 - - [10/Oct/2000:13:42:16 +0000] \"GET /a?b=1 HTTP/1.1\" 200 42 \"-\" \"curl/8 \\x22x\\x22\"\n"
        );
    }

    #[test]
    fn json_lines_parse() {
        let (m, u) = (Method::POST, "/p".parse::<Uri>().unwrap());
        let line = entry(&m, &u).format(AccessLog::Json, SystemTime::now());
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            (v["method"].as_str(), v["status"].as_u64(), v["worker"].as_u64()),
            (Some("POST"), Some(200), Some(1))
        );
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
    }

    #[test]
    fn civil_dates_across_leap_years() {
        let t = |s: u64| clf_time(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(t(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(t(1_796_256_000), "03/Dec/2026:00:00:00 +0000");
    }
}
