//! With `ARCA_SANDBOX_DEFERRED=by-path`, init binds the deferred entries by path before it
//! leaves the host's tree: the way taken on kernels that cannot copy mounts out of a
//! detached tree (before 6.15). The binds must look the same. In a test binary of its
//! own: the setting is read once per process.

mod common;

#[test]
fn deferred_binds_by_path_appear_read_only_and_alone() {
    std::env::set_var("ARCA_SANDBOX_DEFERRED", "by-path");
    if !common::require_root() || common::busybox().is_none() {
        return;
    }
    common::check_deferred_binds(arca_sandbox::UserNamespace::Auto);
    common::check_deferred_binds(arca_sandbox::UserNamespace::Always);
}
