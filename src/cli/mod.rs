//! `berth migrate` and `berth drain`: move volumes between hosts by editing their
//! `spec.placement`, as a GitOps user would by hand, then follow the controller's progress.
//!
//! - [`plan`]: pure decisions (which volumes move together, the patches, refusals).
//! - [`progress`]: pure rendering of a status and whether a wait is over.
//! - [`volumes`]: the I/O (read, patch with a resourceVersion precondition, watch).
//! - [`migrate`] and [`drain`]: the commands.

pub mod drain;
pub mod migrate;
pub mod plan;
pub mod progress;
pub mod volumes;

use std::{fmt, process::ExitCode, str::FromStr, time::Duration};

use clap::Args;
use thiserror::Error;

pub use plan::Refusal;

/// Exit status when the command refuses (unknown or unbound volume, bad configuration).
pub const EXIT_REFUSED: u8 = 2;
/// Exit status when a move stalled or the wait timed out.
pub const EXIT_FAILED: u8 = 1;

/// Why a command could not do what it was asked.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "cannot load a Kubernetes configuration: set KUBECONFIG to a kubeconfig file (or run \
         inside a pod with a service account)"
    )]
    Config(#[source] kube::Error),
    #[error("StatefulLocalVolume {volume} not found: check the name with `kubectl get slv -n {namespace}`")]
    NotFound { volume: String, namespace: String },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot {what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} kept changing while berth patched it: run the command again")]
    Conflict(String),
    #[error(
        "cannot watch the StatefulLocalVolumes of namespace {namespace}: the volumes are patched; \
         follow them with kubectl get slv -n {namespace} -w, or ask for watch on \
         statefullocalvolumes.berth.dev"
    )]
    Watch {
        namespace: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    #[error("the watch of namespace {0} ended: run the command again to keep following the move")]
    WatchEnded(String),
}

impl Error {
    /// The exit status for this error: 2 when the command refused, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::NotFound { .. } | Error::Refused(_) => EXIT_REFUSED,
            _ => EXIT_FAILED,
        }
    }
}

/// Prints `error` with its causes and returns its exit status.
fn fail(command: &str, error: &Error) -> ExitCode {
    eprintln!("berth {command}: {}", crate::report::error_chain(error));
    ExitCode::from(error.exit_code())
}

/// A client from KUBECONFIG, the default kubeconfig or the pod's service account.
async fn connect() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(Error::Config)
}

/// A volume named as `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for VolumeRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(VolumeRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "{s:?} is not NAMESPACE/VOLUME: name the volume with its namespace, e.g. toto/db"
            )),
        }
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Long help of `berth migrate`.
pub const MIGRATE_ABOUT: &str = "\
Move a volume, and every other volume of its Marathon app, to another host.

A Marathon app runs on one host, so all the StatefulLocalVolumes of the namespace whose spec.app \
is the volume's move together. berth migrate only edits them: it sets spec.placement.host to HOST \
and removes HOST from spec.placement.avoidHosts (a JSON merge patch with the resourceVersion as a \
precondition), exactly what you would commit in a GitOps repository. The controller then copies \
the data while the app runs, stops the app for a last copy, verifies it and starts the app on \
HOST (status.migration shows the progress).

Unless --no-wait, berth migrate then prints a line whenever one of the app's volumes changes, \
until each is on HOST and Ready. Interrupting it does not stop the move.

Exit status: 0 when the volumes are on HOST (or already were), 1 when a volume stalled \
(Stalled=True, with its message) or on --timeout, 2 when berth refuses (unknown volume, volume \
not bound to a host yet, volume being deleted).";

/// Long help of `berth drain`.
pub const DRAIN_ABOUT: &str = "\
Move every volume off a host, one Marathon app at a time.

berth drain finds the StatefulLocalVolumes whose data is on HOST (status.host), is moving from or \
to it, or whose spec.placement.host asks for it, and groups them by namespace and app. For each \
app in turn it edits every volume of the app: HOST goes into spec.placement.avoidHosts, and \
spec.placement.host is removed when it names HOST (a JSON merge patch with the resourceVersion as \
a precondition, as you would commit it in a GitOps repository). The controller then chooses a \
new host for the app that its constraints allow and that has room, and moves the data there.

Unless --no-wait, berth drain waits until the app's volumes are Ready on another host before it \
edits the next app, printing a line whenever one of them changes, and ends with a summary. An app \
whose move stalls is reported and skipped. Volumes not bound to a host yet that ask for HOST are \
edited too. Undo with `kubectl edit slv` (remove HOST from avoidHosts).

Exit status: 0 when every app left HOST, 1 when an app stalled or on --timeout, 2 when berth \
cannot load a Kubernetes configuration.";

/// `berth migrate NAMESPACE/VOLUME --to HOST`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  berth migrate toto/db --to node-2
  berth migrate toto/db --to node-2 --no-wait")]
pub struct MigrateArgs {
    /// The volume to move, with its namespace (e.g. toto/db). Every volume of its app moves with it.
    #[arg(value_name = "NAMESPACE/VOLUME")]
    pub volume: VolumeRef,
    /// The host to move to, exactly as Mesos offers it (what Marathon's hostname constraints
    /// match), e.g. node-2.
    #[arg(long, value_name = "HOST", value_parser = plan::parse_host)]
    pub to: String,
    /// Only edit the volumes, do not wait for the move.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the move, e.g. 30m or 2h; the move goes on afterwards.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `berth drain HOST`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  berth drain node-1
  berth drain node-1 --namespace toto --no-wait")]
pub struct DrainArgs {
    /// The host to empty, exactly as Mesos offers it, e.g. node-1.
    #[arg(value_name = "HOST", value_parser = plan::parse_host)]
    pub host: String,
    /// Only the volumes of this namespace.
    #[arg(
        long,
        short = 'n',
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// The volumes of every namespace (the default).
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Edit the volumes of every app at once, do not wait for the moves.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the whole drain, e.g. 30m or 4h; moves under way go on afterwards.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[cfg(test)]
mod tests;
