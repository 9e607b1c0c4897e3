//! Tenants and their chroots.
//!
//! Every user `hostPath` lives beneath a per-tenant root, by default
//! `/containerdata/user-{tenant}`. This module turns untrusted strings (a tenant name, a
//! `hostPath`, a `containerPath`, a Marathon app id) into validated values, and is the single
//! place that decides what is accepted. The controller uses it to refuse bad specs before anything
//! happens; the agent uses it again before it touches a file, because it trusts no caller.
//!
//! Rules are *reject, never normalise* (the one exception is `//`, which is folded to `/`): a path
//! that is not already in its plain form is refused with a message naming what is wrong.

use std::{fmt, path::PathBuf};

use thiserror::Error;

/// Longest path component the kernel accepts (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest path the kernel accepts (`PATH_MAX`, including the terminating NUL).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most components a user path may have. The agent creates one directory per missing parent, so
/// this bounds the work (and the log) of one request; the CRD carries the same limit.
pub const MAX_PATH_COMPONENTS: usize = 32;
/// The default root of a tenant's files on every host.
pub const DEFAULT_ROOT_TEMPLATE: &str = "/containerdata/user-{tenant}";
/// The default Marathon group a tenant's apps must live in.
pub const DEFAULT_APP_GROUP_TEMPLATE: &str = "/{tenant}";

const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Why a tenant, path, template or app id was refused. Messages are shown to users as-is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("is empty: give an absolute path such as /var/lib/data")]
    Empty,
    #[error("must be an absolute path starting with '/' (got {0:?})")]
    NotAbsolute(String),
    #[error("must name a path below the root, not the root itself")]
    IsRoot,
    #[error("must not contain a '..' component")]
    DotDot,
    #[error("must not contain a '.' component")]
    Dot,
    #[error("must not contain {0}")]
    ForbiddenChar(&'static str),
    #[error("may contain only ASCII characters (found {0:?})")]
    NonAscii(char),
    #[error("has a component of {len} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    ComponentTooLong { len: usize },
    #[error(
        "has a component that starts or ends with a space ({0:?}): such names are easy to mistake; remove the space"
    )]
    EdgeSpace(String),
    #[error("has {count} components; the limit is {MAX_PATH_COMPONENTS}")]
    TooManyComponents { count: usize },
    #[error("is {len} bytes long; the limit is {limit}")]
    TooLong { len: usize, limit: usize },
    #[error(
        "{0:?} is not a valid tenant name: use a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    )]
    BadTenant(String),
    #[error("{0:?} is not a valid Marathon app id: {1}")]
    BadAppId(String, &'static str),
    #[error(
        "app {app:?} is outside the tenant's Marathon group {group:?}: a tenant may only use apps under its own group"
    )]
    AppOutsideGroup { app: String, group: String },
    #[error(
        "{group:?} is the tenant's Marathon group itself, not an app: name an app inside {group}/, e.g. {group}/web"
    )]
    AppIsGroup { group: String },
    #[error("template {0:?} is invalid: {1}")]
    BadTemplate(String, &'static str),
}

/// A tenant name: a DNS label, so that `user-<tenant>` is always exactly one path component and
/// no look-alike (upper case, Unicode, dots) can name another tenant's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if is_dns_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PathError::BadTenant(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// An absolute path as a user writes it (`hostPath` relative to the tenant root, or a
/// `containerPath`), validated and held as its components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumePath {
    components: Vec<String>,
}

impl VolumePath {
    /// Validates a user path. `//` is folded; everything else that is not plain is refused.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        check_chars(s)?;
        if !s.starts_with('/') {
            return Err(PathError::NotAbsolute(s.to_owned()));
        }
        if s.len() >= MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                len: s.len(),
                limit: MAX_PATH_BYTES - 1,
            });
        }
        let count = s.split('/').filter(|c| !c.is_empty()).count();
        if count > MAX_PATH_COMPONENTS {
            return Err(PathError::TooManyComponents { count });
        }
        let mut components = Vec::with_capacity(count);
        for c in s.split('/').filter(|c| !c.is_empty()) {
            match c {
                "." => return Err(PathError::Dot),
                ".." => return Err(PathError::DotDot),
                _ if c.len() > MAX_COMPONENT_BYTES => {
                    return Err(PathError::ComponentTooLong { len: c.len() });
                }
                _ if c.starts_with(' ') || c.ends_with(' ') => {
                    return Err(PathError::EdgeSpace(c.to_owned()));
                }
                _ => components.push(c.to_owned()),
            }
        }
        if components.is_empty() {
            return Err(PathError::IsRoot);
        }
        Ok(Self { components })
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The path in its plain form, e.g. `/var/log`.
    pub fn as_string(&self) -> String {
        let mut s = String::new();
        for c in &self.components {
            s.push('/');
            s.push_str(c);
        }
        s
    }

    /// True when `self` is `other` or lies beneath it (`/a` contains `/a/b`).
    pub fn contains(&self, other: &VolumePath) -> bool {
        other.components.starts_with(&self.components)
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

/// Characters that break Docker's `-v src:dst:mode`, Marathon's `field:OP:value` text form, or
/// log lines, or that hide look-alikes.
fn check_chars(s: &str) -> Result<(), PathError> {
    for ch in s.chars() {
        let what = match ch {
            '\0' => "a NUL byte",
            '\n' => "a newline",
            '\r' => "a carriage return",
            ':' => "':' (it splits Docker's -v source:target:mode)",
            ',' => "',' (it splits Marathon's and Docker's option lists)",
            '\\' => "a backslash",
            c if c.is_ascii_control() => "a control character",
            c if !c.is_ascii() => return Err(PathError::NonAscii(c)),
            _ => continue,
        };
        return Err(PathError::ForbiddenChar(what));
    }
    Ok(())
}

/// Where tenant roots live: an absolute template whose last component holds `{tenant}` once,
/// e.g. `/containerdata/user-{tenant}`. The part before the last component is the directory the
/// agent opens at start-up and never leaves (`base`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootTemplate {
    base: VolumePath,
    prefix: String,
    suffix: String,
}

impl RootTemplate {
    pub fn parse(template: &str) -> Result<Self, PathError> {
        let bad = |why| PathError::BadTemplate(template.to_owned(), why);
        let (dir, last) = template
            .rsplit_once('/')
            .ok_or_else(|| bad("it must be an absolute path"))?;
        let (prefix, suffix) = last
            .split_once(TENANT_PLACEHOLDER)
            .ok_or_else(|| bad("its last component must contain {tenant}"))?;
        if dir.contains(TENANT_PLACEHOLDER) || suffix.contains(TENANT_PLACEHOLDER) {
            return Err(bad("{tenant} may appear only once, in the last component"));
        }
        let base = VolumePath::parse(dir).map_err(|_| {
            bad("the directory holding the tenant roots must be a plain absolute path below '/'")
        })?;
        for part in [prefix, suffix] {
            check_chars(part).map_err(|_| bad("the last component holds a forbidden character"))?;
            if part.contains('/') {
                return Err(bad("{tenant} must be in the last component"));
            }
        }
        Ok(Self {
            base,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// The directory holding all tenant roots, e.g. `/containerdata`.
    pub fn base(&self) -> PathBuf {
        PathBuf::from(self.base.as_string())
    }

    /// The root of one tenant.
    pub fn root(&self, tenant: &TenantId) -> TenantRoot {
        TenantRoot {
            base: self.base(),
            dir_name: format!("{}{}{}", self.prefix, tenant.as_str(), self.suffix),
        }
    }
}

impl Default for RootTemplate {
    fn default() -> Self {
        Self::parse(DEFAULT_ROOT_TEMPLATE).expect("the default template is valid")
    }
}

/// One tenant's chroot on a host: `base/dir_name`, e.g. `/containerdata` + `user-toto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoot {
    base: PathBuf,
    dir_name: String,
}

impl TenantRoot {
    /// The directory holding all tenant roots (what the agent opens once).
    pub fn base(&self) -> &std::path::Path {
        &self.base
    }

    /// The tenant's directory name inside `base`: always one component.
    pub fn dir_name(&self) -> &str {
        &self.dir_name
    }

    /// The absolute root, e.g. `/containerdata/user-toto`.
    pub fn path(&self) -> PathBuf {
        self.base.join(&self.dir_name)
    }

    /// The absolute host path of a user path; refused when it would exceed `PATH_MAX`.
    pub fn host_path(&self, path: &VolumePath) -> Result<PathBuf, PathError> {
        let mut p = self.path();
        for c in path.components() {
            p.push(c);
        }
        let len = p.as_os_str().len();
        if len >= MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                len,
                limit: MAX_PATH_BYTES - 1,
            });
        }
        Ok(p)
    }
}

/// Which Marathon app ids a tenant may touch: those strictly inside a group built from a
/// template, by default `/{tenant}` (so tenant `toto` may use `/toto/web`, not `/totoevil/web`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppGroupRule {
    template: String,
}

impl AppGroupRule {
    pub fn parse(template: &str) -> Result<Self, PathError> {
        let bad = |why| PathError::BadTemplate(template.to_owned(), why);
        if template.matches(TENANT_PLACEHOLDER).count() != 1 {
            return Err(bad("it must contain {tenant} exactly once"));
        }
        let sample = template.replace(TENANT_PLACEHOLDER, "tenant");
        MarathonAppId::parse(sample.trim_end_matches('/'))
            .map_err(|_| bad("it must be an absolute Marathon group id"))?;
        Ok(Self {
            template: template.trim_end_matches('/').to_owned(),
        })
    }

    /// The tenant's group, e.g. `/toto`.
    pub fn group(&self, tenant: &TenantId) -> String {
        self.template.replace(TENANT_PLACEHOLDER, tenant.as_str())
    }

    /// Validates an app id and checks that it lies strictly inside the tenant's group.
    pub fn check(&self, tenant: &TenantId, app: &str) -> Result<MarathonAppId, PathError> {
        let id = MarathonAppId::parse(app)?;
        let group = self.group(tenant);
        if id.0 == group {
            return Err(PathError::AppIsGroup { group });
        }
        let inside =
            id.0.strip_prefix(&group)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
        if inside {
            Ok(id)
        } else {
            Err(PathError::AppOutsideGroup {
                app: app.to_owned(),
                group,
            })
        }
    }
}

impl Default for AppGroupRule {
    fn default() -> Self {
        Self::parse(DEFAULT_APP_GROUP_TEMPLATE).expect("the default template is valid")
    }
}

/// Which tenant a Kubernetes namespace belongs to: by default the tenant of the same name, or an
/// explicit map (e.g. namespace `team-a-prod` → tenant `teama`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMapping {
    explicit: std::collections::BTreeMap<String, TenantId>,
    mapped_only: bool,
}

impl NamespaceMapping {
    /// `pairs` are NAMESPACE=TENANT; with `mapped_only`, other namespaces have no tenant.
    pub fn new(pairs: &[(String, String)], mapped_only: bool) -> Result<Self, PathError> {
        let explicit = pairs
            .iter()
            .map(|(ns, tenant)| Ok((ns.clone(), TenantId::parse(tenant)?)))
            .collect::<Result<_, PathError>>()?;
        Ok(Self {
            explicit,
            mapped_only,
        })
    }

    pub fn tenant(&self, namespace: &str) -> Result<TenantId, String> {
        if let Some(t) = self.explicit.get(namespace) {
            return Ok(t.clone());
        }
        if self.mapped_only {
            return Err(format!(
                "namespace {namespace:?} is not mapped to a tenant; ask the platform team to add it to the controller's tenant map"
            ));
        }
        let tenant = TenantId::parse(namespace)
            .map_err(|e| format!("namespace {namespace:?} cannot be a tenant: {e}"))?;
        // An explicit mapping reserves its tenant: a namespace that happens to bear the tenant's
        // name must not reach that tenant's root and apps too.
        if let Some((mapped, _)) = self.explicit.iter().find(|(_, t)| **t == tenant) {
            return Err(format!(
                "namespace {namespace:?} cannot be tenant {tenant}: the operator maps namespace {mapped:?} to that \
                 tenant; ask the platform team to map this namespace"
            ));
        }
        Ok(tenant)
    }
}

/// An absolute Marathon app id, checked against Marathon's own id rules (`PathId.scala`):
/// segments of `a-z`, `0-9`, `-` and `.`, not starting or ending with `-`, no `.`/`..` segments,
/// and a last segment that is not one of Marathon's sub-resource names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MarathonAppId(String);

impl MarathonAppId {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let bad = |why| PathError::BadAppId(s.to_owned(), why);
        let rest = s
            .strip_prefix('/')
            .ok_or_else(|| bad("it must be absolute, starting with '/'"))?;
        if rest.is_empty() {
            return Err(bad("it must name an app, not the root group"));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        for seg in &segments {
            if seg.is_empty() {
                return Err(bad("it has an empty segment ('//' or a trailing '/')"));
            }
            if *seg == "." || *seg == ".." {
                return Err(bad("'.' and '..' segments are not allowed"));
            }
            let ok = seg
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
                && !seg.starts_with('-')
                && !seg.ends_with('-');
            if !ok {
                return Err(bad(
                    "segments may contain only a-z, 0-9, '-' and '.', and may not start or end with '-'",
                ));
            }
            if seg
                .split('.')
                .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
            {
                return Err(bad("dots must separate DNS-style labels"));
            }
        }
        if let Some(last) = segments.last()
            && matches!(*last, "restart" | "tasks" | "versions")
        {
            return Err(bad(
                "the last segment may not be 'restart', 'tasks' or 'versions'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MarathonAppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests;
