//! `berth migrate NAMESPACE/VOLUME --to HOST`.

use std::{collections::BTreeSet, process::ExitCode};

use kube::{Api, ResourceExt};
use tokio::time::Instant;

use super::{
    Error, MigrateArgs, fail,
    plan::{self, MigrateDecision, is_deleting, key},
    progress::{Lines, Target, count, elapsed},
    volumes::{self, Patched, WaitEnd},
};
use crate::crd::StatefulLocalVolume;

/// Runs `berth migrate`, printing what happens; the exit status says how it ended.
pub async fn run(args: MigrateArgs) -> ExitCode {
    match migrate(&args).await {
        Ok(code) => code,
        Err(e) => fail("migrate", &e),
    }
}

async fn migrate(args: &MigrateArgs) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let host = args.to.as_str();
    let client = super::connect().await?;
    let api: Api<StatefulLocalVolume> = Api::namespaced(client, &args.volume.namespace);
    let volume = volumes::get(&api, &args.volume.name)
        .await?
        .ok_or_else(|| Error::NotFound {
            volume: args.volume.to_string(),
            namespace: args.volume.namespace.clone(),
        })?;
    let app = volume.spec.app.clone();
    let all = volumes::list(&api).await?;
    let members = plan::app_volumes(&all, &args.volume.namespace, &app);
    let from = match plan::decide_migrate(&volume, &members, host)? {
        MigrateDecision::AlreadyThere => {
            println!("{} (app {app}) is already on {host}", args.volume);
            return Ok(ExitCode::SUCCESS);
        }
        MigrateDecision::Move { from } => from,
    };

    let mut moving = BTreeSet::new();
    for v in &members {
        if is_deleting(v) {
            println!("{}  being deleted: left as it is", key(v));
            continue;
        }
        match volumes::patch(&api, v, |v| plan::migrate_patch(v, host)).await? {
            Patched::Changed => println!("{}  spec.placement.host: {host}", key(v)),
            Patched::Unchanged => println!("{}  already asks for {host}", key(v)),
            Patched::Gone => {
                println!("{}  deleted meanwhile", key(v));
                continue;
            }
        }
        moving.insert(v.name_any());
    }
    let volumes_of_app = format!("{} of {app}", count(moving.len(), "volume"));
    // Moving back while a move away is under way, or keeping the data where it is.
    let journey = if from == host {
        format!("stay on {host}")
    } else {
        format!("move from {from} to {host}")
    };
    if args.no_wait {
        println!(
            "asked {volumes_of_app} to {journey}; follow with: kubectl get slv -n {} -w",
            args.volume.namespace
        );
        return Ok(ExitCode::SUCCESS);
    }

    let deadline = started + args.timeout;
    let mut lines = Lines::default();
    match volumes::wait(api, &moving, Target::On(host), deadline, &mut lines).await? {
        WaitEnd::Done(_) => {
            let took = elapsed(started.elapsed());
            if from == host {
                println!("kept {volumes_of_app} on {host} ({took})");
            } else {
                println!("moved {volumes_of_app} from {from} to {host} in {took}");
            }
            Ok(ExitCode::SUCCESS)
        }
        WaitEnd::Stalled(stalled) => {
            for (volume, message) in stalled {
                eprintln!("berth migrate: {volume} stalled: {message}");
            }
            eprintln!(
                "berth migrate: the move of {app} to {host} needs a change: see the message above \
                 (kubectl describe slv -n {})",
                args.volume.namespace
            );
            Ok(ExitCode::from(super::EXIT_FAILED))
        }
        WaitEnd::TimedOut => {
            eprintln!(
                "berth migrate: {app} is not on {host} after {}: the move goes on; run the command \
                 again to keep following it",
                humantime::format_duration(args.timeout)
            );
            Ok(ExitCode::from(super::EXIT_FAILED))
        }
        WaitEnd::AllGone => {
            eprintln!("berth migrate: every volume of {app} was deleted during the move");
            Ok(ExitCode::from(super::EXIT_FAILED))
        }
    }
}
