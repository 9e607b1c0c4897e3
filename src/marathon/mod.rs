//! The Marathon client: typed apps that keep every field berth does not own, partial updates
//! of only berth's fields, deployments, the launch queue, the event stream, and constraint
//! helpers. `docs/marathon.md` lists the supported versions and the fields berth owns.
//!
//! - [`app`]: the app model (`App`, `Container`, `Volume`, ...) and [`AppUpdate`].
//! - [`client`]: [`MarathonClient`] (auth, TLS, failover, timeouts, tracing).
//! - [`error`]: [`MarathonError`] from Marathon's status codes and bodies.
//! - [`events`]: the `/v2/events` stream as [`MarathonEvent`]s, reconnecting with backoff.
//! - [`constraint`]: berth's hostname pin and the `field:OP:value` text form.
//! - [`config`]: URLs, credentials, CA and timeouts; [`responses`]: deployments, queue, info.
//! - [`sse`]: the Server-Sent Events frame parser behind [`events`].

pub mod app;
pub mod client;
pub mod config;
pub mod constraint;
pub mod error;
pub mod events;
pub mod responses;
pub mod sse;

pub use app::{
    App, AppUpdate, Container, DeploymentRef, Docker, ExternalVolume, HostVolume, PersistentVolume,
    PortMapping, SecretVolume, Task, TaskFailure, UpgradeStrategy, VersionInfo, Volume, VolumeMode,
};
pub use client::MarathonClient;
pub use config::{MarathonAuth, MarathonConfig};
pub use constraint::{
    Constraint, ConstraintTextError, Constraints, escape_java_regex, parse_constraints_text,
    render_constraints_text,
};
pub use error::{MarathonError, ValidationDetail};
pub use events::{Backoff, EventStream, MarathonEvent};
pub use responses::{Deployment, DeploymentResult, MarathonInfo, QueueEntry};
