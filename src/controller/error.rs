//! Errors a reconcile returns to the runtime (which retries them with back-off). Problems the
//! user must fix are not errors here: they become conditions on the volume.

use thiserror::Error;

use crate::marathon::MarathonError;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}; check the controller's RBAC (the chart's ClusterRole) and the apiserver")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Marathon: {0}")]
    Marathon(#[from] MarathonError),
    #[error("volume {0} has no namespace; StatefulLocalVolume is namespaced, so this is an apiserver bug")]
    NoNamespace(String),
    /// Work that could not finish now and must be retried (the volume's status says why).
    #[error("{0}")]
    Retry(String),
}

impl Error {
    /// A fixed label for the `berth_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Marathon(_) => "marathon",
            Error::NoNamespace(_) => "no_namespace",
            Error::Retry(_) => "retry",
        }
    }
}
