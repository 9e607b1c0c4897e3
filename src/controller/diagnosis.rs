//! Turning Marathon's raw failure reports into conditions a user can act on (pure).
//!
//! Docker's mount errors reach users only as a long OCI runtime message in Marathon's
//! `lastTaskFailure`. berth recognises the common ones and says what is wrong and how to fix it.

use super::conditions::Reason;
use crate::marathon::App;

/// A recognised task failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub reason: Reason,
    pub message: String,
}

/// Reads a `lastTaskFailure` message. `container_paths` are the paths of berth's volumes in the
/// app, so the message can name the volume at fault.
pub fn task_failure(message: &str, container_paths: &[String]) -> Option<Diagnosis> {
    let lower = message.to_ascii_lowercase();
    let culprit = container_paths
        .iter()
        .find(|p| message.contains(&format!("\"{p}\"")) || message.contains(&format!("at {p}")))
        .map(|p| format!(" (the volume at {p})"))
        .unwrap_or_default();
    let raw = shorten(message);
    if lower.contains("not a directory") || lower.contains("are you trying to mount a directory onto a file")
    {
        return Some(Diagnosis {
            reason: Reason::MountTypeMismatch,
            message: format!(
                "Docker could not mount a volume{culprit}: the host path and the path in the image have \
                 different types (a directory onto a file, or the reverse). Set spec.type to File when \
                 the image expects a file there, Directory when it expects a directory. Docker said: {raw}"
            ),
        });
    }
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        return Some(Diagnosis {
            reason: Reason::PermissionDenied,
            message: format!(
                "the task failed with a permission error{culprit}. Set spec.owner to the uid and gid the \
                 container process runs as (berth maps them through the host's user-namespace remap) and \
                 check spec.permissions. The task said: {raw}"
            ),
        });
    }
    None
}

/// A Docker mount failure of the app's current version that keeps its tasks from running.
///
/// A task that cannot mount its volume fails on every relaunch, and the deployment that started
/// it never ends: the failure is looked at first, or it would hide behind "deploying".
pub fn mount_failure(app: &App, container_paths: &[String]) -> Option<Diagnosis> {
    let failure = app.last_task_failure.as_ref()?;
    let current_running = app.tasks.iter().flatten().any(|t| {
        t.state.as_deref() == Some("TASK_RUNNING") && t.version.is_some() && t.version == app.version
    });
    if current_running || failure.version.is_none() || failure.version != app.version {
        return None;
    }
    task_failure(&failure.message, container_paths)
}

/// What to say when Marathon's queue shows the app's launches declined for its constraints.
pub fn unschedulable(host: &str) -> Diagnosis {
    Diagnosis {
        reason: Reason::Unschedulable,
        message: format!(
            "Marathon cannot start the app's tasks: offers are declined for UnfulfilledConstraint. The app \
             is pinned to {host}, where its data is; check that {host}'s Mesos agent is up and has the \
             resources the app asks for, and that the app's other constraints allow {host}"
        ),
    }
}

/// Keeps condition messages readable: Docker's errors can run to kilobytes.
fn shorten(s: &str) -> String {
    const MAX: usize = 600;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// runc 1.1's message, as quoted in the host-safety reference.
    const RUNC_1_1: &str = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/containerdata/user-toto/etc/localtime\" to rootfs at \"/etc/localtime\": mount /containerdata/user-toto/etc/localtime:/etc/localtime (via /proc/self/fd/6), flags: 0x5000: not a directory: unknown: Are you trying to mount a directory onto a file (or vice-versa)? Check if the specified host path exists and is the expected type";

    #[test]
    fn a_directory_mounted_onto_a_file_names_the_volume_and_the_fix() {
        let d = task_failure(RUNC_1_1, &["/data".into(), "/etc/localtime".into()]).unwrap();
        assert_eq!(d.reason, Reason::MountTypeMismatch);
        assert!(
            d.message.contains("(the volume at /etc/localtime)"),
            "{}",
            d.message
        );
        assert!(d.message.contains("Set spec.type to File"), "{}", d.message);
        assert!(d.message.contains("not a directory"));
    }

    #[test]
    fn permission_errors_point_at_owner() {
        let d = task_failure("sh: can't create /data/x: Permission denied", &["/data".into()]).unwrap();
        assert_eq!(d.reason, Reason::PermissionDenied);
        assert!(d.message.contains("spec.owner"));
    }

    #[test]
    fn other_failures_are_not_guessed_at() {
        assert_eq!(task_failure("Container exited with status 1", &[]), None);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = format!("not a directory {}", "é".repeat(1000));
        let d = task_failure(&long, &[]).unwrap();
        assert!(d.message.len() < 1200);
        assert!(d.message.ends_with('…'));
    }
}
