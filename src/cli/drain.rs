//! `berth drain HOST`.

use std::{collections::BTreeSet, process::ExitCode};

use kube::{Api, ResourceExt};
use tokio::time::Instant;

use super::{
    DrainArgs, Error, fail,
    plan::{self, DrainGroup, bound_host, key, requested_host},
    progress::{Lines, Target, count, elapsed},
    volumes::{self, Patched, WaitEnd},
};
use crate::crd::StatefulLocalVolume;

/// Runs `berth drain`, printing what happens; the exit status says how it ended.
pub async fn run(args: DrainArgs) -> ExitCode {
    match drain(&args).await {
        Ok(code) => code,
        Err(e) => fail("drain", &e),
    }
}

/// What the drain did so far.
#[derive(Default)]
struct Tally {
    apps: usize,
    volumes: usize,
    /// (app, [(volume, message)]) of the apps whose move stalled.
    stalled: Vec<(String, Vec<(String, String)>)>,
    /// The app being waited for when the time ran out.
    timed_out: Option<String>,
}

async fn drain(args: &DrainArgs) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let host = args.host.as_str();
    let client = super::connect().await?;
    let api: Api<StatefulLocalVolume> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let all = volumes::list(&api).await?;
    let groups = plan::drain_groups(&all, host);
    if groups.is_empty() {
        println!("nothing to drain: no volume is on {host} or asks for it");
        return Ok(ExitCode::SUCCESS);
    }
    let total: usize = groups.iter().map(|g| g.volumes.len()).sum();
    println!(
        "draining {host}: {} ({})",
        count(groups.len(), "app"),
        count(total, "volume")
    );

    let mut tally = Tally::default();
    let mut lines = Lines::default();
    for group in &groups {
        let label = format!("{} (namespace {})", group.app, group.namespace);
        let api: Api<StatefulLocalVolume> = Api::namespaced(client.clone(), &group.namespace);
        println!("{label}: leaving {host}");
        let moving = patch_group(&api, group, host).await?;
        if args.no_wait || moving.is_empty() {
            continue;
        }
        match volumes::wait(api, &moving, Target::AwayFrom(host), deadline, &mut lines).await? {
            WaitEnd::Done(done) => {
                let to = done.iter().find_map(|v| bound_host(v)).unwrap_or("another host");
                println!("{label}: {} now on {to}", count(done.len(), "volume"));
                tally.apps += 1;
                tally.volumes += done.len();
            }
            WaitEnd::Stalled(stalled) => {
                println!("{label}: stalled, going on with the next app");
                tally.stalled.push((label, stalled));
            }
            WaitEnd::TimedOut => {
                tally.timed_out = Some(label);
                break;
            }
            WaitEnd::AllGone => println!("{label}: its volumes were deleted"),
        }
    }
    Ok(summary(args, &groups, &tally, started))
}

/// Patches every volume of `group` away from `host`; returns the names of those to wait for.
async fn patch_group(
    api: &Api<StatefulLocalVolume>,
    group: &DrainGroup<'_>,
    host: &str,
) -> Result<BTreeSet<String>, Error> {
    let bound: BTreeSet<String> = group.bound().into_iter().collect();
    let mut moving = BTreeSet::new();
    for v in &group.volumes {
        let outcome = volumes::patch(api, v, |v| plan::drain_patch(v, host)).await?;
        let unbound = bound_host(v).is_none();
        match outcome {
            Patched::Gone => println!("{}  deleted meanwhile", key(v)),
            Patched::Changed if unbound && requested_host(v) == Some(host) => println!(
                "{}  not bound to a host yet: removed spec.placement.host {host}, added {host} to \
                 avoidHosts",
                key(v)
            ),
            Patched::Changed => println!("{}  {host} added to spec.placement.avoidHosts", key(v)),
            Patched::Unchanged => println!("{}  already avoids {host}", key(v)),
        }
        if outcome != Patched::Gone && bound.contains(&v.name_any()) {
            moving.insert(v.name_any());
        }
    }
    Ok(moving)
}

/// Prints the summary and returns the exit status.
fn summary(args: &DrainArgs, groups: &[DrainGroup<'_>], tally: &Tally, started: Instant) -> ExitCode {
    let host = &args.host;
    let took = elapsed(started.elapsed());
    if args.no_wait {
        let scope = match &args.namespace {
            Some(ns) => format!("-n {ns}"),
            None => "-A".into(),
        };
        println!(
            "asked {} to leave {host} in {took}; follow with: kubectl get slv {scope} -w",
            count(groups.len(), "app")
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "drained {host}: {}, {} moved in {took}",
        count(tally.apps, "app"),
        count(tally.volumes, "volume")
    );
    let mut failed = false;
    if !tally.stalled.is_empty() {
        failed = true;
        eprintln!(
            "{} stalled (they are still on {host}):",
            count(tally.stalled.len(), "app")
        );
        for (app, volumes) in &tally.stalled {
            for (volume, message) in volumes {
                eprintln!("  {app}: {volume}: {message}");
            }
        }
    }
    if let Some(app) = &tally.timed_out {
        failed = true;
        eprintln!(
            "timed out after {} waiting for {app}; its move goes on, the apps after it were not asked \
             to move: run berth drain {host} again",
            humantime::format_duration(args.timeout)
        );
    }
    if failed {
        ExitCode::from(super::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
