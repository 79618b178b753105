//! The plugin's log file: stdout is the CNI protocol, so what happened goes
//! to a file named by the network configuration.
//!
//! Conf fields (in the plugin's object of the conflist, like Calico's
//! `log_file_path` / `log_level`):
//! - `logFile`: path of the log file; absent or `""`: no log. The parent
//!   directory is created if missing.
//! - `logLevel`: `off`, `error` (failed invocations only), `warn` (same as
//!   error), `info` (one line per invocation, the default), `debug` (also
//!   the network configuration received and what was printed).
//!
//! Logging never changes the outcome of an invocation: a file that cannot
//! be opened or written is skipped silently. Each record is one `write(2)`
//! on a file opened with `O_APPEND`, so concurrent invocations do not
//! interleave within a line.

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::CniError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub const DEFAULT: Level = Level::Info;

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "off" | "none" => Level::Off,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" | "trace" => Level::Debug,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Level::Off => "OFF",
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConf {
    pub file: Option<PathBuf>,
    pub level: Level,
}

impl LogConf {
    /// What stdin asks for, never failing: anything unusable means "no log"
    /// (a bad `logLevel` keeps the file at the default level). Used before
    /// and after the invocation, whatever its outcome.
    pub fn peek(stdin: &[u8]) -> LogConf {
        let root: Option<Value> = serde_json::from_slice(stdin).ok();
        let get = |k: &str| root.as_ref().and_then(|r| r.get(k)).and_then(Value::as_str);
        let file = get("logFile")
            .filter(|p| !p.is_empty() && !p.contains('\0'))
            .map(PathBuf::from);
        let level = get("logLevel")
            .and_then(Level::parse)
            .unwrap_or(Level::DEFAULT);
        LogConf { file, level }
    }

    /// Refuse values that are present but wrong (code 7), so a typo does
    /// not silently turn logging off. Not applied to DEL, which must
    /// succeed whatever the configuration.
    pub fn validate(root: &serde_json::Map<String, Value>) -> Result<(), CniError> {
        match root.get("logFile") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.contains('\0') => {}
            Some(v) => {
                return Err(CniError::invalid_config(format!(
                    "field `logFile` = {v}: expected a file path as a string (\"\" for no log)"
                )))
            }
        }
        match root.get("logLevel") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) if Level::parse(s).is_some() => Ok(()),
            Some(v) => Err(CniError::invalid_config(format!(
                "field `logLevel` = {v}: expected one of \"off\", \"error\", \"warn\", \"info\", \"debug\""
            ))),
        }
    }
}

/// One invocation, as logged.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub exit: i32,
    /// What was printed on stdout.
    pub stdout: &'a str,
    /// The network configuration received (logged at debug).
    pub stdin: &'a [u8],
    pub elapsed_ms: u128,
}

/// A logfmt value: bare when it is a plain token, else quoted.
fn value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
    {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the epoch (UTC).
pub fn timestamp(since_epoch_ms: u128) -> String {
    let ms = (since_epoch_ms % 1000) as u32;
    let secs = (since_epoch_ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The lines to append for `rec` at `level` (empty: nothing to log).
pub fn lines(level: Level, now_ms: u128, pid: u32, rec: &Record<'_>) -> String {
    let failed = rec.exit != 0;
    let this = if failed { Level::Error } else { Level::Info };
    if level == Level::Off || this > level {
        return String::new();
    }
    let out: Option<Value> = serde_json::from_str(rec.stdout).ok();
    let mut line = format!(
        "{} [{}] ferry pid={pid} cmd={} containerID={} netns={} ifname={}",
        timestamp(now_ms),
        this.label(),
        value(rec.command),
        value(rec.container_id),
        value(rec.netns),
        value(rec.ifname),
    );
    if failed {
        let field = |k: &str| {
            out.as_ref()
                .and_then(|o| o.get(k))
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .unwrap_or_default()
        };
        line.push_str(&format!(
            " result=error exit={} code={} msg={}",
            rec.exit,
            value(&field("code")),
            value(&field("msg"))
        ));
        let details = field("details");
        if !details.is_empty() {
            line.push_str(&format!(" details={}", value(&details)));
        }
    } else {
        line.push_str(" result=ok");
        let ips: Vec<&str> = out
            .as_ref()
            .and_then(|o| o.get("ips"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if !ips.is_empty() {
            line.push_str(&format!(" ips={}", value(&ips.join(","))));
        }
    }
    line.push_str(&format!(" elapsed_ms={}\n", rec.elapsed_ms));
    if level >= Level::Debug {
        line.push_str(&format!(
            "{} [DEBUG] ferry pid={pid} stdin={} stdout={}\n",
            timestamp(now_ms),
            value(&String::from_utf8_lossy(rec.stdin)),
            value(rec.stdout)
        ));
    }
    line
}

/// Append the record to the configured file, if any. Never fails.
pub fn write(conf: &LogConf, rec: &Record<'_>) {
    let Some(path) = &conf.file else { return };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let text = lines(conf.level, now_ms, std::process::id(), rec);
    if text.is_empty() {
        return;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut f) = file {
        // One write for the whole record (O_APPEND places it atomically).
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(exit: i32, stdout: &'a str) -> Record<'a> {
        Record {
            command: "ADD",
            container_id: "c1",
            netns: "/var/run/netns/p 1",
            ifname: "eth0",
            exit,
            stdout,
            stdin: b"{\"cniVersion\":\"1.0.0\"}",
            elapsed_ms: 12,
        }
    }

    #[test]
    fn peek_reads_file_and_level_and_never_fails() {
        let c = LogConf::peek(br#"{"logFile":"/tmp/x/cni.log","logLevel":"DEBUG"}"#);
        assert_eq!(c.file, Some(PathBuf::from("/tmp/x/cni.log")));
        assert_eq!(c.level, Level::Debug);
        for junk in [
            &b""[..],
            b"not json",
            b"[1]",
            br#"{"logFile":5}"#,
            br#"{"logFile":""}"#,
        ] {
            assert_eq!(LogConf::peek(junk).file, None, "{junk:?}");
        }
        let c = LogConf::peek(br#"{"logFile":"/l","logLevel":"loud"}"#);
        assert_eq!(c.level, Level::Info);
    }

    #[test]
    fn validate_refuses_wrong_types_and_levels() {
        let ok = |s: &str| {
            let v: Value = serde_json::from_str(s).unwrap();
            LogConf::validate(v.as_object().unwrap())
        };
        assert!(ok(r#"{}"#).is_ok());
        assert!(ok(r#"{"logFile":"/var/log/ferry/cni.log","logLevel":"warn"}"#).is_ok());
        assert!(ok(r#"{"logFile":""}"#).is_ok());
        for bad in [
            r#"{"logFile":5}"#,
            r#"{"logLevel":"loud"}"#,
            r#"{"logLevel":3}"#,
        ] {
            let e = ok(bad).unwrap_err();
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("log"), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    fn one_line_per_invocation_at_info() {
        let ok = lines(
            Level::Info,
            0,
            7,
            &rec(0, r#"{"ips":[{"address":"10.88.0.2/24"}]}"#),
        );
        assert_eq!(
            ok,
            "1970-01-01T00:00:00.000Z [INFO] ferry pid=7 cmd=ADD containerID=c1 \
             netns=\"/var/run/netns/p 1\" ifname=eth0 result=ok ips=10.88.0.2/24 elapsed_ms=12\n"
        );
        let err = lines(
            Level::Info,
            0,
            7,
            &rec(1, r#"{"code":11,"msg":"ferryd is \"gone\"","details":""}"#),
        );
        assert!(err.contains("[ERROR]"), "{err}");
        assert!(
            err.contains("result=error exit=1 code=11 msg=\"ferryd is \\\"gone\\\"\""),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn levels_filter_records() {
        let ok = rec(0, "");
        let bad = rec(1, "not json");
        assert!(lines(Level::Off, 0, 1, &bad).is_empty());
        assert!(lines(Level::Error, 0, 1, &ok).is_empty());
        assert!(lines(Level::Warn, 0, 1, &ok).is_empty());
        assert_eq!(lines(Level::Error, 0, 1, &bad).lines().count(), 1);
        let dbg = lines(Level::Debug, 0, 1, &ok);
        assert_eq!(dbg.lines().count(), 2, "{dbg}");
        assert!(
            dbg.contains("stdin=\"{\\\"cniVersion\\\":\\\"1.0.0\\\"}\""),
            "{dbg}"
        );
    }

    #[test]
    fn write_skips_unopenable_files() {
        // A path below a regular file cannot be created: nothing happens.
        let conf = LogConf {
            file: Some(PathBuf::from("/proc/self/status/cni.log")),
            level: Level::Debug,
        };
        write(&conf, &rec(0, ""));
        write(
            &LogConf {
                file: None,
                level: Level::Debug,
            },
            &rec(0, ""),
        );
    }
}
