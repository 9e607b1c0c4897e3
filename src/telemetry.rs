//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `BERTH_LOG_FORMAT=json`, JSON lines. Colours only when stderr is a terminal (and `NO_COLOR` is
//! not set), so files, journald and pod logs get plain text. A `RUST_LOG` or `BERTH_LOG_FORMAT`
//! that cannot be what was meant stops the program at start instead of silently logging nothing.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, filter::LevelFilter, fmt, prelude::*};

/// Why the logging configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogConfigError {
    #[error(
        "RUST_LOG={value:?}: {reason}; use a level (error, warn, info, debug, trace or off) or TARGET=LEVEL pairs, e.g. RUST_LOG=info or RUST_LOG=berth=debug,info"
    )]
    Filter { value: String, reason: String },
    #[error("BERTH_LOG_FORMAT={0:?} is not a log format: use text or json")]
    Format(String),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `BERTH_LOG_FORMAT`; unset or empty means text.
pub fn parse_format(value: Option<&str>) -> Result<LogFormat, LogConfigError> {
    match value.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(LogConfigError::Format(other.to_owned())),
    }
}

/// Parses a `RUST_LOG` filter; unset or empty means `info`. A bare word must be a level: the
/// filter would otherwise read `RUST_LOG=verbose` as "everything from the target `verbose`",
/// which is nothing.
pub fn parse_filter(value: Option<&str>) -> Result<EnvFilter, LogConfigError> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok(EnvFilter::new("info"));
    }
    let bad = |reason: String| LogConfigError::Filter {
        value: value.to_owned(),
        reason,
    };
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && directive.parse::<LevelFilter>().is_err() {
            return Err(bad(format!(
                "{directive:?} is not a log level (to filter a target, write {directive}=LEVEL)"
            )));
        }
    }
    EnvFilter::builder().parse(value).map_err(|e| bad(e.to_string()))
}

/// Installs the subscriber from `RUST_LOG` and `BERTH_LOG_FORMAT`.
pub fn init() -> Result<(), LogConfigError> {
    let filter = parse_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let format = parse_format(std::env::var("BERTH_LOG_FORMAT").ok().as_deref())?;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_ansi(false).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(colour).with_writer(std::io::stderr))
            .try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_targets_are_accepted() {
        for ok in [
            None,
            Some(""),
            Some("info"),
            Some("DEBUG"),
            Some("off"),
            Some("berth=debug,info"),
            Some("berth::controller=trace"),
            Some("info,kube=warn"),
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn unknown_levels_are_refused_with_what_to_write() {
        let err = parse_filter(Some("verbose")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RUST_LOG=\"verbose\": \"verbose\" is not a log level (to filter a target, write verbose=LEVEL); use a level (error, warn, info, debug, trace or off) or TARGET=LEVEL pairs, e.g. RUST_LOG=info or RUST_LOG=berth=debug,info"
        );
        assert!(parse_filter(Some("info,chatty")).is_err());
        assert!(parse_filter(Some("berth=verbose")).is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format(None), Ok(LogFormat::Text));
        assert_eq!(parse_format(Some("json")), Ok(LogFormat::Json));
        assert_eq!(
            parse_format(Some("yaml")).unwrap_err().to_string(),
            "BERTH_LOG_FORMAT=\"yaml\" is not a log format: use text or json"
        );
    }
}
