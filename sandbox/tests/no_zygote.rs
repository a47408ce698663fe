//! With `ARCA_SANDBOX_ZYGOTE=off`, keepers are forked from the calling process itself (the
//! way taken whenever the zygote cannot be used), and sandboxes work the same. In a test
//! binary of its own: the setting is read once per process.

mod common;

use common::{busybox, check_sandboxes_work, children_named, require_root};

#[test]
fn without_a_zygote_keepers_are_forked_here_and_sandboxes_work() {
    std::env::set_var("ARCA_SANDBOX_ZYGOTE", "off");
    if !require_root() || busybox().is_none() {
        return;
    }
    check_sandboxes_work();
    assert_eq!(children_named("arca-zygote"), Vec::<u32>::new());
}
