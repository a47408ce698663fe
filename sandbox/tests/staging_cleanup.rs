//! A run's staging directory (the host directory its root is built on) is gone when the
//! run returns: removed as soon as the program started. In a test binary of its own:
//! nothing else of this process runs sandboxes meanwhile.

mod common;

use arca_sandbox::{run, CgroupMode, Outcome};
use common::{busybox, require_root, sh};

fn staging_dirs() -> Vec<String> {
    let prefix = format!("arca-sandbox-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[test]
fn staging_directories_are_removed_after_the_runs() {
    if !require_root() || busybox().is_none() {
        return;
    }
    // With a cgroup and without one: the keeper is reaped here, or by the reaper thread.
    for cgroup in [CgroupMode::Auto, CgroupMode::Off, CgroupMode::Off] {
        let mut spec = sh("true");
        spec.cgroup = cgroup;
        let mut output = Vec::new();
        let report = run(&spec, &mut output).expect("running");
        assert_eq!(report.outcome, Outcome::Exited(0));
        assert_eq!(staging_dirs(), Vec::<String>::new());
    }
}
