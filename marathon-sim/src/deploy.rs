//! The deployment engine: each tick promotes staged tasks, advances running deployments
//! (start, scale, restart following `upgradeStrategy`, stop) and relaunches lost tasks.

use serde_json::{Value, json};

use crate::placement::{Constraint, Offer, meets_constraint};
use crate::state::{DeploymentKind, DeploymentOutcome, RestartPlan, SimState, Task, TaskState};
use crate::util::{iso_millis, now_millis, uuid_v4};

pub fn tick(state: &mut SimState) {
    state.tick += 1;
    promote_staged(state);
    let ids: Vec<String> = state.deployments.iter().map(|d| d.id.clone()).collect();
    for id in ids {
        advance(state, &id);
    }
    // Outside deployments the scheduler keeps each app at its instance count (lost or failed
    // tasks come back, where constraints allow).
    let idle_apps: Vec<String> = state
        .apps
        .keys()
        .filter(|id| state.deployments_of(id).is_empty())
        .cloned()
        .collect();
    for app_id in idle_apps {
        let Some(app) = state.apps.get(&app_id) else {
            continue;
        };
        let missing = app.instances().saturating_sub(state.alive_tasks(&app_id).count());
        launch(state, &app_id, missing, None);
    }
}

fn promote_staged(state: &mut SimState) {
    let now = iso_millis(now_millis());
    let tick = state.tick;
    let mut promoted = Vec::new();
    for task in state.tasks.iter_mut() {
        if task.state == TaskState::Staging && task.ready && task.staged_tick < tick {
            task.state = TaskState::Running;
            task.started_at = Some(now.clone());
            promoted.push(task.clone());
        }
    }
    for task in promoted {
        state.emit_task_change(&task, "TASK_RUNNING", "Running", "");
    }
}

fn advance(state: &mut SimState, deployment_id: &str) {
    let Some(deployment) = state.deployments.iter().find(|d| d.id == deployment_id).cloned() else {
        return;
    };
    let app_id = deployment.app_id.clone();
    let done = match deployment.kind {
        DeploymentKind::NoOp | DeploymentKind::StopApplication => true,
        DeploymentKind::StartApplication | DeploymentKind::ScaleApplication => {
            scale_step(state, &app_id, deployment_id)
        }
        DeploymentKind::RestartApplication => restart_step(state, &app_id, deployment_id),
    };
    if done {
        finish(state, deployment_id);
    }
}

/// Ends a deployment successfully and reports it on the event stream.
pub fn finish(state: &mut SimState, deployment_id: &str) {
    let Some(pos) = state.deployments.iter().position(|d| d.id == deployment_id) else {
        return;
    };
    let deployment = state.deployments.remove(pos);
    if let Some(record) = state.record_mut(deployment_id) {
        record.outcome = DeploymentOutcome::Succeeded;
    }
    let plan = deployment.to_json();
    state.emit(
        "deployment_step_success",
        json!({ "plan": plan, "currentStep": plan["steps"].get(0) }),
    );
    state.emit("deployment_success", json!({ "id": deployment.id, "plan": plan }));
}

/// Start and scale: launch up to the instance count or kill the youngest surplus.
fn scale_step(state: &mut SimState, app_id: &str, deployment_id: &str) -> bool {
    let Some(app) = state.apps.get(app_id) else {
        return true;
    };
    let target = app.instances();
    let alive: Vec<Task> = state.alive_tasks(app_id).cloned().collect();
    if alive.len() > target {
        let mut youngest_first = alive.clone();
        youngest_first.sort_by(|a, b| b.staged_at.cmp(&a.staged_at));
        for task in youngest_first.iter().take(alive.len() - target) {
            state.remove_task(&task.id, "TASK_KILLED", "Killed", "Killed by scale");
        }
    } else if alive.len() < target {
        launch(state, app_id, target - alive.len(), Some(deployment_id));
    }
    let tasks: Vec<&Task> = state.alive_tasks(app_id).collect();
    tasks.len() == target && tasks.iter().all(|t| t.state == TaskState::Running)
}

/// `TaskReplaceActor`: keep `minHealthy` healthy, never exceed `maxCapacity`, replace every task
/// of an older configuration.
fn restart_step(state: &mut SimState, app_id: &str, deployment_id: &str) -> bool {
    let Some(app) = state.apps.get(app_id) else {
        return true;
    };
    let target = app.instances();
    let config = app.config_version();
    let strategy = app
        .definition
        .get("upgradeStrategy")
        .cloned()
        .unwrap_or(Value::Null);
    let plan = match state
        .deployments
        .iter()
        .find(|d| d.id == deployment_id)
        .and_then(|d| d.restart_plan)
    {
        Some(plan) => plan,
        None => {
            let plan = restart_plan(target, &strategy);
            if let Some(d) = state.deployments.iter_mut().find(|d| d.id == deployment_id) {
                d.restart_plan = Some(plan);
            }
            plan
        }
    };
    let is_old = |t: &Task| t.config_version != config;
    let old: Vec<Task> = state.alive_tasks(app_id).filter(|t| is_old(t)).cloned().collect();
    let new_running = state
        .alive_tasks(app_id)
        .filter(|t| !is_old(t) && t.state == TaskState::Running)
        .count();
    let old_running = old.iter().filter(|t| t.state == TaskState::Running).count();
    let mut healthy = old_running + new_running;
    // Old tasks that are not yet running add nothing to health: kill them first.
    for task in old.iter().filter(|t| t.state != TaskState::Running) {
        state.remove_task(&task.id, "TASK_KILLED", "Killed", "Killed for restart");
    }
    for task in old.iter().filter(|t| t.state == TaskState::Running) {
        if healthy == 0 || healthy - 1 < plan.min_healthy {
            break;
        }
        state.remove_task(&task.id, "TASK_KILLED", "Killed", "Killed for restart");
        healthy -= 1;
    }
    let alive = state.alive_tasks(app_id).count();
    let new_alive = state.alive_tasks(app_id).filter(|t| !is_old(t)).count();
    let room = plan.max_capacity.saturating_sub(alive);
    let wanted = target.saturating_sub(new_alive);
    launch(state, app_id, room.min(wanted), Some(deployment_id));
    let tasks: Vec<&Task> = state.alive_tasks(app_id).collect();
    tasks.iter().all(|t| !is_old(t) && t.state == TaskState::Running) && tasks.len() == target
}

/// `minHealthy = ceil(n × minimumHealthCapacity)`, `maxCapacity = floor(n × (1 +
/// maximumOverCapacity))`, and one extra instance when the two are equal.
pub fn restart_plan(instances: usize, strategy: &Value) -> RestartPlan {
    let min_health = strategy
        .get("minimumHealthCapacity")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let over = strategy
        .get("maximumOverCapacity")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let n = instances as f64;
    let min_healthy = (n * min_health).ceil() as usize;
    let mut max_capacity = (n * (1.0 + over)).floor() as usize;
    if instances > 0 && min_healthy == max_capacity {
        max_capacity += 1;
    }
    RestartPlan {
        min_healthy,
        max_capacity,
    }
}

/// Places up to `count` new tasks of the app's current configuration; what cannot be placed is
/// reported in the launch queue (`/v2/queue`).
pub fn launch(state: &mut SimState, app_id: &str, count: usize, deployment_id: Option<&str>) -> usize {
    let Some(app) = state.apps.get(app_id) else {
        return 0;
    };
    if count == 0 {
        if let Some(app) = state.apps.get_mut(app_id) {
            app.launch_queue = Default::default();
        }
        return 0;
    }
    if app
        .delay_until
        .is_some_and(|until| until > std::time::Instant::now())
    {
        // Marathon's launch delay after a failed task: the launch waits in the queue.
        return 0;
    }
    let config = app.config_version();
    let version = app.version();
    let disk = app.disk_mb();
    let ready = !(state.docker_mode && crate::docker::docker_image(&app.definition).is_some());
    let constraints: Vec<Constraint> = app
        .definition
        .get("constraints")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Constraint::from_json).collect())
        .unwrap_or_default();
    let mut launched = 0;
    let mut declined_constraint = 0;
    let mut declined_disk = 0;
    let offers = state.agents.iter().filter(|a| a.up).count();
    for _ in 0..count {
        // Instances of older configurations are ignored by constraint checks during upgrades.
        let placed_hosts: Vec<String> = state
            .alive_tasks(app_id)
            .filter(|t| t.config_version == config)
            .map(|t| t.host.clone())
            .collect();
        declined_constraint = 0;
        declined_disk = 0;
        let mut chosen: Option<usize> = None;
        let mut best_load = usize::MAX;
        for (index, agent) in state.agents.iter().enumerate().filter(|(_, a)| a.up) {
            let offer = Offer {
                hostname: &agent.hostname,
                attributes: &agent.attributes,
            };
            let placed: Vec<Offer<'_>> = placed_hosts
                .iter()
                .filter_map(|h| state.agents.iter().find(|a| &a.hostname == h))
                .map(|a| Offer {
                    hostname: &a.hostname,
                    attributes: &a.attributes,
                })
                .collect();
            if !constraints.iter().all(|c| meets_constraint(c, &offer, &placed)) {
                declined_constraint += 1;
                continue;
            }
            let used: f64 = state
                .tasks
                .iter()
                .filter(|t| t.host == agent.hostname)
                .map(|t| t.disk_mb)
                .sum();
            if agent.disk_mb - used < disk {
                declined_disk += 1;
                continue;
            }
            let load = state.tasks.iter().filter(|t| t.host == agent.hostname).count();
            if load < best_load {
                best_load = load;
                chosen = Some(index);
            }
        }
        let Some(index) = chosen else { break };
        let agent = state.agents[index].clone();
        let old_alive = state.alive_tasks(app_id).any(|t| t.config_version != config);
        let instance = uuid_v4();
        let port = state.next_port;
        state.next_port = state.next_port.wrapping_add(1).max(31000);
        let task = Task {
            id: format!(
                "{}.instance-{instance}._app.1",
                app_id.trim_start_matches('/').replace('/', "_")
            ),
            instance_id: format!(
                "{}.marathon-{instance}",
                app_id.trim_start_matches('/').replace('/', "_")
            ),
            app_id: app_id.to_string(),
            host: agent.hostname.clone(),
            agent_id: agent.id.clone(),
            state: TaskState::Staging,
            staged_at: iso_millis(now_millis()),
            started_at: None,
            version: version.clone(),
            config_version: config.clone(),
            staged_tick: state.tick,
            disk_mb: disk,
            port,
            ready,
        };
        state.emit_task_change(&task, "TASK_STAGING", "Staging", "");
        state.tasks.push(task);
        launched += 1;
        let alive_now = state.alive_tasks(app_id).count();
        if let Some(record) = deployment_id.and_then(|id| state.record_mut(id)) {
            record.old_and_new_overlapped |= old_alive;
            record.max_tasks_alive = record.max_tasks_alive.max(alive_now);
        }
    }
    let now = iso_millis(now_millis());
    if let Some(app) = state.apps.get_mut(app_id) {
        let queue = &mut app.launch_queue;
        if launched < count {
            queue.waiting = count - launched;
            queue.since.get_or_insert_with(|| now.clone());
            queue.offers_processed = offers;
            queue.declined_constraint = declined_constraint;
            queue.declined_disk = declined_disk;
            queue.last_unused_offer_at = Some(now);
        } else {
            *queue = Default::default();
        }
    }
    launched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_instance_when_min_healthy_equals_max_capacity() {
        let p = restart_plan(
            1,
            &json!({ "minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.0 }),
        );
        assert_eq!((p.min_healthy, p.max_capacity), (1, 2));
        let p = restart_plan(
            1,
            &json!({ "minimumHealthCapacity": 0.0, "maximumOverCapacity": 0.0 }),
        );
        assert_eq!((p.min_healthy, p.max_capacity), (0, 1));
        let p = restart_plan(
            3,
            &json!({ "minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5 }),
        );
        assert_eq!((p.min_healthy, p.max_capacity), (2, 4));
    }
}
