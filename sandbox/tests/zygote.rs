//! Keepers come from the process's zygote, a child forked once (see `zygote.rs`), and
//! sandboxes work through it as they do without: binds through held directories,
//! deferred binds, cgroups. In a test binary of its own, so that the zygote seen is the
//! one these tests started.

mod common;

use arca_sandbox::{run, CgroupMode, Outcome};
use common::{busybox, children_named, prepared_run_with_binds, require_root, sh};

#[test]
fn keepers_come_from_one_zygote_and_sandboxes_work_through_it() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, output) = prepared_run_with_binds();
    assert_eq!(report.outcome, Outcome::Exited(0), "{output}");
    assert_eq!(output, "early\nlate\n");
    for cgroup in [CgroupMode::Auto, CgroupMode::Off] {
        let mut spec = sh("echo $$");
        spec.cgroup = cgroup;
        let mut output = Vec::new();
        let report = run(&spec, &mut output).expect("running");
        assert_eq!(report.outcome, Outcome::Exited(0));
        assert_eq!(output, b"1\n");
    }
    // One zygote, a child of this process named after the thread that forked it, however
    // many sandboxes ran.
    assert_eq!(children_named("arca-zygote").len(), 1);
}
