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
    assert_eq!(children_named("arca-zygote").len(), 1);
}
