//! The Mesos attributes of the agent's host, so that berth's placement can honour an app's
//! attribute constraints (`["rack","CLUSTER","r1"]`) before Marathon has to.
//!
//! The agent takes the same string as the Mesos agent's `--attributes` (`rack:r1;zone:west`),
//! or `file:///path` to read it from a file, as Mesos flags allow. Values are reported the way
//! Marathon's constraint matcher sees them (`marathon-api.md`, "Other fields are agent
//! attributes"): text as written, scalars as `0.###`, ranges as sorted `[b-e,...]`, sets as
//! sorted `{a,b,...}`.

use std::collections::BTreeMap;

/// Parses a Mesos attribute string into name → value as Marathon compares it.
pub fn parse(spec: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("attribute {part:?} has no value: write NAME:VALUE, e.g. rack:r1"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || !name.chars().all(is_text_char) {
            return Err(format!(
                "attribute name {name:?} is not valid: use letters, digits and _ / . -"
            ));
        }
        let shown = value_string(value).map_err(|why| format!("attribute {name}: {why}"))?;
        if out.insert(name.to_owned(), shown).is_some() {
            return Err(format!("attribute {name} is given twice"));
        }
    }
    Ok(out)
}

fn is_text_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-')
}

/// The value as Marathon's `getValueString` renders it.
fn value_string(value: &str) -> Result<String, String> {
    if let Some(inner) = value.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("range {value:?} has no closing ]"))?;
        let mut ranges = Vec::new();
        for r in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (b, e) = r
                .split_once('-')
                .ok_or_else(|| format!("range {r:?} is not BEGIN-END"))?;
            let num = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("range bound {s:?} is not a number"))
            };
            ranges.push((num(b)?, num(e)?));
        }
        ranges.sort_unstable();
        let body: Vec<String> = ranges.iter().map(|(b, e)| format!("{b}-{e}")).collect();
        return Ok(format!("[{}]", body.join(",")));
    }
    if let Some(inner) = value.strip_prefix('{') {
        let inner = inner
            .strip_suffix('}')
            .ok_or_else(|| format!("set {value:?} has no closing }}"))?;
        let mut items: Vec<&str> = inner
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        items.sort_unstable();
        return Ok(format!("{{{}}}", items.join(",")));
    }
    // Mesos reads a value that parses as a number as a scalar.
    if let Some(shown) = scalar(value) {
        return Ok(shown);
    }
    if value.is_empty() || !value.chars().all(is_text_char) {
        return Err(format!(
            "value {value:?} is not valid: use letters, digits and _ / . -, a number, [BEGIN-END,...] or {{A,B,...}}"
        ));
    }
    Ok(value.to_owned())
}

/// A number as Marathon shows a scalar (`2.50` → `2.5`), or `None` for anything else. Marathon's
/// `IS` normalises a numeric constraint value the same way.
pub fn scalar(value: &str) -> Option<String> {
    let x = value.parse::<f64>().ok()?;
    let plain = value
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'));
    (x.is_finite() && plain).then(|| scalar_string(x))
}

/// Java's `DecimalFormat("0.###")`: at most three decimals, rounded half to even, no trailing
/// zeros.
fn scalar_string(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    if s == "-0" { "0".to_owned() } else { s }
}

/// Reads `--attributes`: the string itself, or `file:///path` holding it.
pub fn load(flag: &str) -> Result<BTreeMap<String, String>, String> {
    let spec = match flag.strip_prefix("file://") {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("--attributes: cannot read {path}: {e}"))?
        }
        None => flag.to_owned(),
    };
    parse(&spec).map_err(|e| format!("--attributes: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_as_marathon_compares_them() {
        let a =
            parse("rack:r1; zone:eu-west/1 ;cpus:2.50;weight:3;ports:[31000-32000, 80-80];disks:{ssd,hdd}")
                .unwrap();
        assert_eq!(a["rack"], "r1");
        assert_eq!(a["zone"], "eu-west/1");
        assert_eq!(a["cpus"], "2.5");
        assert_eq!(a["weight"], "3");
        assert_eq!(a["ports"], "[80-80,31000-32000]");
        assert_eq!(a["disks"], "{hdd,ssd}");
        assert_eq!(scalar_string(1.23456), "1.235");
        assert_eq!(scalar_string(0.0001), "0");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_attributes_are_refused_with_the_reason() {
        for (bad, needle) in [
            ("rack", "no value"),
            ("ra ck:r1", "name"),
            (":r1", "name"),
            ("rack:r 1", "not valid"),
            ("rack:", "not valid"),
            ("rack:r1;rack:r2", "twice"),
            ("ports:[1-2", "closing"),
            ("ports:[a-b]", "not a number"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn a_file_url_is_read_like_mesos_does() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("attributes");
        std::fs::write(&f, "rack:r2\n").unwrap();
        assert_eq!(load(&format!("file://{}", f.display())).unwrap()["rack"], "r2");
        assert!(
            load("file:///nonexistent/berth")
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
