//! berth: stateful local volumes for Marathon apps, declared as Kubernetes custom resources.
//!
//! - [`crd`]: the `StatefulLocalVolume` API (spec, status, validation).
//! - [`tenant`]: tenant roots, user paths and app-id rules (the chroot).
//! - [`agent`]: the privileged host agent that creates volumes beneath a tenant root.
//! - [`marathon`]: the Marathon REST client (apps, deployments, queue, events, constraints).
//! - [`cli`]: `berth migrate` and `berth drain`, which move volumes by editing their spec.
pub mod agent;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod marathon;
pub mod report;
pub mod telemetry;
pub mod tenant;
pub mod tls;
