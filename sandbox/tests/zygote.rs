//! Keepers come from the process's zygote, a child forked once (see `zygote.rs`), and
//! sandboxes work through it as they do without: binds through held directories,
//! deferred binds, cgroups. In a test binary of its own, so that the zygote seen is the
//! one these tests started.

mod common;

use common::{busybox, check_sandboxes_work, children_named, require_root};

#[test]
fn keepers_come_from_one_zygote_and_sandboxes_work_through_it() {
    if !require_root() || busybox().is_none() {
        return;
    }
    check_sandboxes_work();
    // One zygote, a child of this process named after the thread that forked it, however
    // many sandboxes ran.
    let zygotes = children_named("arca-zygote");
    assert_eq!(zygotes.len(), 1);
    // It prepares sandboxes in the background (SCHED_BATCH, 3: the 41st field of
    // `stat`), and the programs run as the caller does (checked in
    // `check_sandboxes_work`).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", zygotes[0])).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from the third (state) on: the policy is the 41st field.
    assert_eq!(after_name.split(' ').nth(41 - 3), Some("3"), "{stat}");
}
