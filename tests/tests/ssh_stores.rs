//! `arca` as a client of machines over ssh (issue #17, client side), through a real
//! OpenSSH server on a loopback port, with real Nix on the other end (`nix-store --serve
//! --write` for `ssh://`, `nix-daemon --stdio` for `ssh-ng://`) and Arca
//! (`arca --serve`, `arca --stdio`):
//!
//! - `--store ssh://…` and `ssh-ng://…` work for store commands: `path-info -r --json`
//!   agrees with Nix's own view of the machine's store, `store export` is byte for byte
//!   Nix's `--export`;
//! - `arca copy --to`/`--from` such stores moves closures with their metadata, which
//!   Nix then verifies; an unsigned path is refused by a checking daemon in Nix's words,
//!   and taken with `--no-check-sigs`;
//! - `NIX_SSHOPTS='-F CONFIG'` reaches a host alias with its own port and key;
//! - bad URLs are refused naming the parameter at fault.
//!
//! Needs root, OpenSSH's server, real Nix and a static busybox; skipped loudly without
//! them (an error in CI).

use std::process::{Command, Output, Stdio};

use arca_tests::build::{busybox_available, Scratch};
use arca_tests::ssh::{
    arca_machine_uri, essentials, nix_machine_uri, remote_tools_available, Sshd,
};
use arca_tests::store::{assert_arca_verify_clean, lines};
use arca_tests::{arca_bin, NIX_CONFIG};
use serde_json::Value;

/// `arca --store STORE ARGS` with `NIX_SSHOPTS` reaching `sshd` (whatever the exit
/// status); `STORE` is a local root or a URL.
fn arca_over_ssh(sshd: &Sshd, store: &str, args: &[&str]) -> Output {
    Command::new(arca_bin())
        .env("NIX_SSHOPTS", sshd.ssh_opts())
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--store", store])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("arca can be spawned")
}

fn ok(output: Output, context: &str) -> Vec<u8> {
    assert!(
        output.status.success(),
        "{context}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn store_commands_and_copies_work_over_ssh_and_ssh_ng() {
    let test = "store_commands_and_copies_work_over_ssh_and_ssh_ng";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    // A machine with real Nix, which has built a small graph.
    let machine = Scratch::new();
    let drvs = machine.instantiate("graphs.nix", &[], &["chatty", "top"]);
    let outputs = machine.nix_realise(&drvs.iter().map(String::as_str).collect::<Vec<_>>());
    let output_args: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let closure =
        lines(&machine.nix_store(&[&["--query", "--requisites"][..], &output_args].concat()));
    let closure_args: Vec<&str> = closure.iter().map(String::as_str).collect();
    let expected = essentials(&machine.nix_path_info(&closure_args));
    let export = machine.nix_store(&[&["--export"][..], &closure_args].concat());

    for scheme in ["ssh", "ssh-ng"] {
        let url = nix_machine_uri(scheme, &machine);
        let local = Scratch::new();
        let local_root = local.arca_root().to_str().unwrap().to_owned();
        // Queries and dumps of the machine's store, as Nix sees it there.
        let json = ok(
            arca_over_ssh(
                &sshd,
                &url,
                &[&["path-info", "--json", "-r"][..], &output_args].concat(),
            ),
            scheme,
        );
        let infos: Vec<Value> = serde_json::from_slice(&json).unwrap();
        assert_eq!(essentials(&infos), expected, "{scheme}: path-info -r");
        let exported = ok(
            arca_over_ssh(
                &sshd,
                &url,
                &[&["store", "export"][..], &closure_args].concat(),
            ),
            scheme,
        );
        assert!(
            exported == export,
            "{scheme}: store export differs from nix-store --export"
        );

        // Pull the closures into a local Arca store: unsigned, so only with
        // --no-check-sigs (the settings require signatures).
        let refused = arca_over_ssh(
            &sshd,
            &local_root,
            &[&["copy", "--from", &url][..], &output_args].concat(),
        );
        assert!(
            !refused.status.success(),
            "{scheme}: unsigned paths were taken"
        );
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("lacks a signature by a trusted key"),
            "{scheme}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        ok(
            arca_over_ssh(
                &sshd,
                &local_root,
                &[
                    &["copy", "--no-check-sigs", "--from", &url][..],
                    &output_args,
                ]
                .concat(),
            ),
            scheme,
        );
        assert_eq!(
            essentials(&local.arca_path_info(&closure_args)),
            expected,
            "{scheme}: pulled"
        );
        assert_arca_verify_clean(&local.arca_root(), scheme);

        // Push them to an Arca machine, then from there to a fresh Nix machine, which
        // verifies what it got.
        let arca_box = Scratch::new();
        let to_arca = arca_machine_uri(scheme, &arca_box);
        ok(
            arca_over_ssh(
                &sshd,
                &local_root,
                &[
                    &["copy", "--no-check-sigs", "--to", &to_arca][..],
                    &output_args,
                ]
                .concat(),
            ),
            scheme,
        );
        assert_eq!(
            essentials(&arca_box.arca_path_info(&closure_args)),
            expected,
            "{scheme}: pushed"
        );
        let nix_box = Scratch::new();
        ok(
            arca_over_ssh(
                &sshd,
                arca_box.arca_root().to_str().unwrap(),
                &[
                    &[
                        "copy",
                        "--no-check-sigs",
                        "--to",
                        &nix_machine_uri(scheme, &nix_box),
                    ][..],
                    &output_args,
                ]
                .concat(),
            ),
            scheme,
        );
        assert_eq!(
            essentials(&nix_box.nix_path_info(&closure_args)),
            expected,
            "{scheme}: on Nix"
        );
        nix_box.nix_store(&["--verify", "--check-contents"]);
        // Copying again sends nothing.
        let again = arca_over_ssh(
            &sshd,
            arca_box.arca_root().to_str().unwrap(),
            &[
                &[
                    "copy",
                    "--no-check-sigs",
                    "--to",
                    &nix_machine_uri(scheme, &nix_box),
                ][..],
                &output_args,
            ]
            .concat(),
        );
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(
            again.status.success() && stderr.contains("copied 0 paths"),
            "{scheme}: {stderr}"
        );
    }
}

#[test]
fn nix_sshopts_reach_a_host_alias_of_an_ssh_config() {
    let test = "nix_sshopts_reach_a_host_alias_of_an_ssh_config";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    let config = ssh_dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host builder\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  \
             BatchMode yes\n",
            sshd.port(),
            sshd.client_key().display(),
            ssh_dir.path().join("known_hosts").display()
        ),
    )
    .unwrap();
    let machine = Scratch::new();
    let url = format!(
        "ssh://builder?remote-program={}&remote-store={}",
        arca_bin().display(),
        machine.arca_root().display()
    );
    let bb = machine.add_busybox_to_arca();
    let output = Command::new(arca_bin())
        .env("NIX_SSHOPTS", format!("-F {}", config.display()))
        .args(["--store", &url, "path-info", &bb])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\nsshd: {}",
        String::from_utf8_lossy(&output.stderr),
        sshd.log()
    );
    assert_eq!(lines(&output.stdout), [bb]);
}

#[test]
fn bad_ssh_store_urls_are_refused_by_name() {
    for (url, words) in [
        ("ssh://h?frobnicate=1", "unknown parameter 'frobnicate'"),
        ("ssh-ng://-oProxyCommand=evil", "invalid SSH host name"),
        ("ssh://h?compress=maybe", "compress must be true or false"),
    ] {
        let output = Command::new(arca_bin())
            .args(["--store", url, "path-info"])
            .arg("/nix/store/00000000000000000000000000000000-x")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}");
        assert!(stderr.contains(words), "{url}: {stderr}");
    }
}

/// The host `localhost` (no user) runs the remote program directly, as Nix does: no
/// ssh, no server needed.
#[test]
fn localhost_runs_the_remote_program_without_ssh() {
    let test = "localhost_runs_the_remote_program_without_ssh";
    if !busybox_available(test) {
        return;
    }
    let machine = Scratch::new();
    let bb = machine.add_busybox_to_arca();
    let local = Scratch::new();
    for scheme in ["ssh", "ssh-ng"] {
        let url = format!(
            "{scheme}://localhost?remote-program={}&remote-store={}",
            arca_bin().display(),
            machine.arca_root().display()
        );
        let output = local
            .arca_cmd()
            .env("NIX_SSHOPTS", "-o ProxyCommand=false")
            .env("PATH", "/usr/bin:/bin")
            .args(["copy", "--no-check-sigs", "--from", &url, &bb])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{scheme}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(local.arca_registered(&bb), "{scheme}");
        std::fs::remove_dir_all(local.arca_root()).unwrap();
    }
}

/// `arca build` and `arca derivation show` run on the machine behind `--store ssh://…`
/// and `ssh-ng://…`, real Nix's or Arca's: the output paths come back (over `ssh://` read
/// off the `.drv` file, which the serve protocol can only dump).
#[test]
fn builds_and_derivations_work_through_ssh_stores() {
    let test = "builds_and_derivations_work_through_ssh_stores";
    if !remote_tools_available(test) {
        return;
    }
    let ssh_dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(ssh_dir.path());
    for kind in ["arca", "nix"] {
        for scheme in ["ssh", "ssh-ng"] {
            let context = format!("{kind} machine over {scheme}://");
            let machine = Scratch::new();
            let drvs = machine.instantiate_for_both("graphs.nix", &[], &["chatty"]);
            let expected = lines(&machine.nix_store(&["--query", "--outputs", &drvs[0]]));
            let url = if kind == "arca" {
                arca_machine_uri(scheme, &machine)
            } else {
                nix_machine_uri(scheme, &machine)
            };
            let built = ok(arca_over_ssh(&sshd, &url, &["build", &drvs[0]]), &context);
            assert_eq!(lines(&built), expected, "{context}");
            let shown = ok(
                arca_over_ssh(&sshd, &url, &["derivation", "show", &drvs[0]]),
                &context,
            );
            let json: Value = serde_json::from_slice(&shown).unwrap();
            assert_eq!(
                json[&drvs[0]]["outputs"]["out"]["path"].as_str(),
                Some(expected[0].as_str()),
                "{context}: {json}"
            );
        }
    }
}
