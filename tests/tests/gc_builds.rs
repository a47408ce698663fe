//! The garbage collector with builds: `arca build --out-link` roots the outputs (and,
//! with keep-derivations, the derivations that built them), `arca store query --roots`
//! names the link, a build's inputs and outputs survive a collection running during the
//! build, and everything goes once nothing roots it.
//!
//! Derivations come from JSON through `arca derivation add`; a static busybox is needed
//! (skipped loudly without it, an error in CI).

use std::process::Stdio;

use arca_tests::build::Scratch;
use arca_tests::store::{assert_arca_verify_clean, lines};

fn gc(scratch: &Scratch, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["store", "gc", "--no-runtime-roots"];
    args.extend_from_slice(extra);
    lines(&scratch.arca_ok(&args))
}

#[test]
fn out_links_keep_outputs_and_their_derivations_until_removed() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("out_links_keep_outputs_and_their_derivations_until_removed")
    else {
        return;
    };
    let dep = scratch.add_derivation(&bb, "dep", "echo dep > $out", &[], &[]);
    let dep_out = scratch.arca_output(&dep);
    // `top`'s output mentions `dep`'s: a reference.
    let top = scratch.add_derivation(&bb, "top", &format!("echo {dep_out} > $out"), &[], &[&dep]);
    let top_out = scratch.arca_output(&top);
    let link = scratch.path().join("result");
    let link_arg = link.to_str().unwrap();
    scratch.arca_build_ok(&["--out-link", link_arg, &top]);
    assert_eq!(
        std::fs::read_link(&link).unwrap().to_str().unwrap(),
        top_out
    );

    let roots = lines(&scratch.arca_ok(&["store", "query", "--roots", &dep_out]));
    assert_eq!(roots, vec![format!("{link_arg} -> {top_out}")]);

    gc(&scratch, &[]);
    for path in [&top_out, &dep_out, &top, &dep, &bb] {
        assert!(scratch.arca_registered(path), "{path} must stay");
    }
    assert_arca_verify_clean(&scratch.arca_root(), "after a collection");

    // Without keep-derivations only the outputs' closure stays.
    let dead = lines(&scratch.arca_ok(&[
        "store",
        "gc",
        "--no-runtime-roots",
        "--print-dead",
        "--no-keep-derivations",
    ]));
    for path in [&top, &dep, &bb] {
        assert!(
            dead.contains(path),
            "{path} is dead without keep-derivations: {dead:?}"
        );
    }

    std::fs::remove_file(&link).unwrap();
    gc(&scratch, &[]);
    for path in [&top_out, &dep_out, &top, &dep, &bb] {
        assert!(!scratch.arca_registered(path), "{path} must go");
        assert!(
            !scratch.arca_physical(path).exists(),
            "{path}'s files must go"
        );
    }
}

#[test]
fn keep_outputs_keeps_the_outputs_of_a_rooted_derivation() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("keep_outputs_keeps_the_outputs_of_a_rooted_derivation")
    else {
        return;
    };
    let drv = scratch.add_derivation(&bb, "kept", "echo kept > $out", &[], &[]);
    let out = scratch.arca_output(&drv);
    scratch.arca_build_ok(&[&drv]);
    // A cheap root: a file named after the derivation.
    let base = drv.rsplit('/').next().unwrap();
    std::fs::write(
        scratch.arca_root().join("nix/var/nix/gcroots").join(base),
        b"",
    )
    .unwrap();

    let dead = gc(&scratch, &["--print-dead"]);
    assert!(dead.contains(&out), "{dead:?}");
    let dead = gc(&scratch, &["--print-dead", "--keep-outputs"]);
    assert!(!dead.contains(&out), "{dead:?}");
    gc(&scratch, &["--keep-outputs"]);
    assert!(scratch.arca_registered(&out));
    gc(&scratch, &[]);
    assert!(!scratch.arca_registered(&out));
    assert!(scratch.arca_registered(&drv));
}

#[test]
fn collections_during_a_build_spare_its_inputs_and_outputs() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("collections_during_a_build_spare_its_inputs_and_outputs")
    else {
        return;
    };
    // An input built earlier and rooted by nothing: dead, until a build uses it.
    let input = scratch.add_derivation(&bb, "input", "echo input > $out", &[], &[]);
    let input_out = scratch.arca_output(&input);
    scratch.arca_build_ok(&[&input]);
    let slow = scratch.add_derivation(
        &bb,
        "slow",
        &format!("sleep 2; cat {input_out} > $out"),
        &[],
        &[&input],
    );
    let slow_out = scratch.arca_output(&slow);
    // The derivation is rooted (as `nix-instantiate --add-root` would); its input's
    // output is not: only the build's temporary roots keep it while the build runs (or
    // the build makes it again if a collection took it first).
    let drv_root = scratch
        .arca_root()
        .join("nix/var/nix/gcroots")
        .join(slow.rsplit('/').next().unwrap());
    std::fs::write(&drv_root, b"").unwrap();

    // The link roots the output once the build process (and its temporary roots) is
    // gone; a collection may run at any moment around that.
    let link = scratch.path().join("slow-result");
    let mut build = scratch
        .arca_cmd()
        .args(["build", "-o", link.to_str().unwrap(), &slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect over and over while the build runs.
    let mut collections = 0;
    while build.try_wait().unwrap().is_none() {
        gc(&scratch, &[]);
        collections += 1;
    }
    let output = build.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the build failed after {collections} collections: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(lines(&output.stdout), vec![slow_out.clone()]);
    assert!(collections >= 2, "only {collections} collections ran");
    assert!(scratch.arca_registered(&slow_out));
    assert_eq!(
        std::fs::read_to_string(scratch.arca_physical(&slow_out)).unwrap(),
        "input\n"
    );
    assert_arca_verify_clean(&scratch.arca_root(), "after collections during a build");

    // Without the link nothing roots any of it.
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&drv_root).unwrap();
    gc(&scratch, &[]);
    assert!(!scratch.arca_registered(&slow_out));
    assert!(!scratch.arca_registered(&input_out));
}
