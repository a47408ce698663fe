//! With `ARCA_SANDBOX_ZYGOTE=off`, keepers are forked from the calling process itself (the
//! way taken whenever the zygote cannot be used), and sandboxes work the same. In a test
//! binary of its own: the setting is read once per process.

mod common;

use arca_sandbox::{run, CgroupMode, Outcome};
use common::{busybox, children_named, prepared_run_with_binds, require_root, sh};

#[test]
fn without_a_zygote_keepers_are_forked_here_and_sandboxes_work() {
    std::env::set_var("ARCA_SANDBOX_ZYGOTE", "off");
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
    assert_eq!(children_named("arca-zygote"), Vec::<u32>::new());
}
