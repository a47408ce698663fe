//! Puts the source revision into `arca --version` (`ARCA_REVISION`): `git describe` of
//! the checkout when there is one, else `$ARCA_REVISION` from the environment (a release
//! tarball's packager), else "unknown".

use std::process::Command;

fn main() {
    let from_git = Command::new("git")
        .args(["describe", "--always", "--dirty", "--exclude", "*"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let revision = from_git
        .or_else(|| std::env::var("ARCA_REVISION").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ARCA_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=ARCA_REVISION");
    // A new commit or a change of branch moves HEAD.
    for file in ["../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(file).exists() {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
