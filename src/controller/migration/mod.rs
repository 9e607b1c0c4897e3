//! Moving an app's data to another host (see `docs/migration.md`).
//!
//! A move is part of the app's pass: when a volume's spec asks for another host than the one
//! holding its data (`placement.host`, or its host in `placement.avoidHosts`), the pass belongs
//! to the move until it ends. Every step is recorded in each volume's sealed `status.migration`
//! *before* it is acted on, so a controller that crashes anywhere resumes from the status:
//!
//! 1. **Copying**: the source agent sends each volume to the target agent while the app runs
//!    (the controller mints the target's ticket and never carries data);
//! 2. **Stopping**: the app's instance count is recorded, then the app is scaled to 0 (one
//!    write) and berth waits for its tasks to end;
//! 3. **FinalCopy**: what changed since the live pass is sent; then the target verifies its copy
//!    against the source's manifest (BLAKE3 of every file, types, modes, owners, links) and puts
//!    it in place carrying the volume's identity;
//! 4. **Switching**: the status moves to the new host (sealed), then the app is pinned there and
//!    its instance count restored (one write); once a task runs there, the old copy is released
//!    or deleted per `reclaimPolicy` and the move ends.
//!
//! Before the switch a move can be abandoned (the spec no longer asks for it, a volume is
//! deleted, the app stayed stopped longer than `--migration-stop-limit`): the transfers are
//! cancelled, the staged copy discarded, and the app started again on its old host with its data
//! untouched. berth never pins an app to a host whose copy it has not verified, and never leaves
//! an app it stopped at 0 once the move ends.

mod act;
pub mod plan;
#[cfg(test)]
pub(crate) mod tests;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::{Instrument, info, info_span};

use super::{context::Context, pass::Observed, ports::VolumeEvent};
use plan::{AppMove, Intent};

/// How often a move looks at its transfers and the app while it runs.
const POLL: Duration = Duration::from_millis(500);
/// When a copy pass that failed or could not start is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The move's part of a pass: `Some(requeue)` when the pass belonged to a move, `None` for an
/// ordinary pass (with `obs.move_blocked` set when a move was asked for but cannot start).
pub async fn run(ctx: &Context, obs: &mut Observed) -> Option<Duration> {
    let now = Timestamp::now();
    let mut intent = plan::intent(obs, None, now);
    if matches!(intent, Intent::Start(_) | Intent::Choose { .. })
        && let Some((why, left)) = ctx.move_paused(&obs.app_id)
    {
        let note = format!(
            "the last move was abandoned ({why}); berth tries again in {}",
            humantime::format_duration(Duration::from_secs(left.as_secs().div_ceil(60) * 60))
        );
        wait_to_move(ctx, obs, note).await;
        return None;
    }
    let mut candidates = Vec::new();
    if let Intent::Choose { from } = &intent {
        candidates = ctx.agents.candidates().await;
        match plan::choose_target(obs, from, need_bytes(obs), &candidates) {
            Ok(to) => intent = plan::intent(obs, Some(&to), now),
            Err(why) => {
                let note = format!("cannot leave {from}: {why}");
                for v in obs.volumes.iter().filter(|v| v.request().is_some()) {
                    ctx.kube
                        .publish(&v.obj, &VolumeEvent::warning("MoveBlocked", &note))
                        .await;
                }
                obs.move_waiting = Some(note);
                return None;
            }
        }
    }
    let m = match intent {
        Intent::None | Intent::Choose { .. } => return None,
        Intent::Continue(m) => m,
        Intent::Start(m) => {
            if candidates.is_empty() {
                candidates = ctx.agents.candidates().await;
            }
            let checked = match crate::controller::pass::plan::found_app(obs) {
                Some(app) => plan::check_target(app, &m.to, need_bytes(obs), &candidates),
                None => Err("the app cannot be read from Marathon".into()),
            };
            if let Err(why) = checked {
                let note = format!(
                    "cannot move to {} yet: {why}; the data stays on {} meanwhile",
                    m.to, m.from
                );
                wait_to_move(ctx, obs, note).await;
                return None;
            }
            info!(app = %obs.app_id, from = %m.from, to = %m.to, volumes = m.volumes.len(), "starting a move");
            m
        }
    };
    let span = info_span!("move", from = %m.from, to = %m.to, step = m.step.as_str());
    Some(drive(ctx, obs, m).instrument(span).await)
}

/// The move waits for something berth cannot change: the volumes stay bound where they are,
/// and a warning event says why (repeats of one note add to its count, not to the events).
async fn wait_to_move(ctx: &Context, obs: &mut Observed, note: String) {
    for v in obs.volumes.iter().filter(|v| v.request().is_some()) {
        ctx.kube
            .publish(&v.obj, &VolumeEvent::warning("MoveWaiting", &note))
            .await;
    }
    obs.move_waiting = Some(note);
}

/// What the app's volumes hold, as their hosts last measured it.
fn need_bytes(obs: &Observed) -> u64 {
    obs.volumes
        .iter()
        .filter_map(|v| v.obj.status.as_ref()?.usage.as_ref()?.used_bytes)
        .map(|b| u64::try_from(b).unwrap_or(0))
        .sum()
}

async fn drive(ctx: &Context, obs: &mut Observed, m: AppMove) -> Duration {
    act::step(ctx, obs, m).await
}
