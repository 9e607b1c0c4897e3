//! The Kubernetes writes of a pass: the finalizer, the status (server-side apply), and events.
//!
//! Events are `events.k8s.io/v1`. kube-runtime's `Recorder` folds every event of one reason into
//! a series that keeps the *first* note, so a second `AppUpdated` would still show the first
//! deployment: here an event is a repeat only when its note is the same too, and a new note makes
//! a new event, so events say what happened this time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{
    api::events::v1::{Event, EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tracing::warn;

use super::{
    metrics::Metrics,
    ports::{KubeApi, VolumeEvent},
};
use crate::crd::{FINALIZER, StatefulLocalVolume, StatefulLocalVolumeStatus};

/// The field manager of berth's status writes.
pub const FIELD_MANAGER: &str = "berth-controller";
/// Repeats of one event within this time update its series instead of making a new event.
const SERIES_TTL: Duration = Duration::from_secs(3600);

/// An event's identity for repeats: a hash of (volume uid, type, reason, note), so that a
/// controller with many volumes keeps 8 bytes per event it published, not its text.
type EventKey = u64;

fn event_key(uid: &str, ev: &VolumeEvent) -> EventKey {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (uid, ev.warning, &ev.reason, &ev.note).hash(&mut h);
    h.finish()
}

struct Published {
    name: String,
    namespace: String,
    count: i32,
    at: tokio::time::Instant,
}

pub struct KubePort {
    client: kube::Client,
    /// `reportingInstance` of events: this replica's identity.
    instance: String,
    metrics: Arc<Metrics>,
    published: Mutex<HashMap<EventKey, Published>>,
}

impl KubePort {
    pub fn new(client: kube::Client, instance: String, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            instance,
            metrics,
            published: Mutex::default(),
        }
    }

    fn api(&self, v: &StatefulLocalVolume) -> Api<StatefulLocalVolume> {
        Api::namespaced(self.client.clone(), &v.namespace().unwrap_or_default())
    }

    fn count(&self, what: &'static str, r: &Result<(), kube::Error>) {
        let code = match r {
            Ok(()) => "ok".to_owned(),
            Err(kube::Error::Api(s)) => s.code.to_string(),
            Err(_) => "error".to_owned(),
        };
        self.metrics.kube(what, code);
    }

    /// Sets the volume's finalizers to `finalizers`, if nobody changed the object since berth
    /// read it (the resourceVersion is the precondition).
    async fn set_finalizers(
        &self,
        v: &StatefulLocalVolume,
        finalizers: Vec<String>,
    ) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": v.resource_version()}});
        match self
            .api(v)
            .patch(&v.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // Gone already: nothing holds it any more.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn publish_event(&self, v: &StatefulLocalVolume, ev: &VolumeEvent) -> Result<(), kube::Error> {
        let namespace = v.namespace().unwrap_or_default();
        let key = event_key(&v.uid().unwrap_or_default(), ev);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        let repeat = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|_, p| p.at.elapsed() < SERIES_TTL);
            published.get_mut(&key).map(|p| {
                p.count += 1;
                p.at = tokio::time::Instant::now();
                (p.name.clone(), p.namespace.clone(), p.count)
            })
        };
        if let Some((name, ns, count)) = repeat {
            let patch = json!({"series": EventSeries { count, last_observed_time: MicroTime(now) }});
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            return api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ());
        }
        let name = format!("{}.{:x}", v.name_any(), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(ev.reason.clone()),
            note: Some(ev.note.clone()),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(v.object_ref(&())),
            reporting_controller: Some("berth.dev/controller".into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.published.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Published {
                name,
                namespace,
                count: 1,
                at: tokio::time::Instant::now(),
            },
        );
        Ok(())
    }
}

impl KubeApi for KubePort {
    fn add_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            let mut finalizers = v.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            let r = self.set_finalizers(v, finalizers).await;
            self.count("add_finalizer", &r);
            r
        })
    }

    fn remove_finalizer<'a>(&'a self, v: &'a StatefulLocalVolume) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            let finalizers = v
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let r = self.set_finalizers(v, finalizers).await;
            self.count("remove_finalizer", &r);
            r
        })
    }

    fn apply_status<'a>(
        &'a self,
        v: &'a StatefulLocalVolume,
        status: &'a StatefulLocalVolumeStatus,
    ) -> BoxFuture<'a, Result<(), kube::Error>> {
        Box::pin(async move {
            let body = json!({
                "apiVersion": StatefulLocalVolume::api_version(&()),
                "kind": StatefulLocalVolume::kind(&()),
                "status": status,
            });
            let r = self
                .api(v)
                .patch_status(
                    &v.name_any(),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| ());
            self.count("apply_status", &r);
            r
        })
    }

    fn publish<'a>(&'a self, v: &'a StatefulLocalVolume, event: &'a VolumeEvent) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let r = self.publish_event(v, event).await;
            self.count("event", &r);
            if let Err(e) = r {
                warn!(volume = %format!("{}/{}", v.namespace().unwrap_or_default(), v.name_any()), reason = %event.reason, error = %e, "cannot record an event");
            }
        })
    }
}
