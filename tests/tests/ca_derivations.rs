//! Nix 2.8's experimental `ca-derivations` and `impure-derivations` through `arca daemon`,
//! driven by real Nix clients and compared with real Nix building the same expressions
//! itself (`NIX_REMOTE=local` on a lab store of its own, with the same nix.conf):
//!
//! - a floating content-addressed derivation with two outputs, `out` referring to itself
//!   and `dev` to `out`, gets real Nix's output paths, NAR hashes, references and `ca`
//!   (`fixed:r:sha256:…`); the self-reference is rewritten to the final path;
//! - early cut-off: an irrelevant change to the CA derivation leaves its output path, and
//!   the deferred input-addressed derivation depending on it resolves to what is built
//!   already, so it is not built again; its output path is real Nix's;
//! - without `ca-derivations` in the daemon's `experimental-features`, a CA derivation is
//!   refused with Nix's message;
//! - the realisations Arca records are read by real Nix from Arca's store, identical to
//!   the ones real Nix records for the same build, and served by the daemon;
//! - `RegisterDrvOutput` (what `nix copy --to` the daemon sends): refused from an
//!   untrusted client unless signed by a `trusted-public-keys` key, accepted from a
//!   trusted one, and used by later builds;
//! - an impure derivation builds anew each time it is wanted; a pure derivation depending
//!   on one is refused with Nix's message.
//!
//! The builders are the host's `/bin/sh`, so the daemons (and real Nix) build with
//! `sandbox = false`, on a store at `/nix/store` in a private mount namespace: the
//! harness is [`arca_tests::lab`]. Needs root, `unshare` and real Nix; skipped loudly
//! without them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use arca_tests::daemon::Unprivileged;
use arca_tests::lab::{expect_success, nobody, prerequisites, stderr_of, valid, Lab, NsDaemon};
use serde_json::Value;

// --- Shared setup -----------------------------------------------------------------------

/// The settings of the daemons, and of real Nix building locally to compare with, with
/// the experimental `features` (and `nix-command`): builds on the host, as root (each
/// lab has a `/nix/var/nix/userpool` of its own, so with a `build-users-group` two tests
/// running at once would hand the same account to two builds, which kill each other's
/// processes), and no substituters (there is no network).
fn nix_conf(features: &str) -> String {
    format!(
        "sandbox = false\nbuild-users-group =\nsubstituters =\nexperimental-features = nix-command {features}\n"
    )
}

/// The features of most tests.
const CA: &str = "ca-derivations";

/// The features of the impure derivations' tests.
const CA_IMPURE: &str = "ca-derivations impure-derivations";

/// The clients' settings: evaluating `__contentAddressed` and `__impure` needs the
/// features on the client's side too.
const CLIENT_CONF: &str =
    "substituters =\nexperimental-features = nix-command ca-derivations impure-derivations\n";

/// `ca.nix`: `ca`, a floating content-addressed derivation with two outputs (`out`
/// refers to itself, through a file and a symlink; `dev` is a symlink to `out`) and an
/// attribute `seed` that changes its `.drv` but not what it builds; `dependent`, an
/// input-addressed derivation depending on both outputs, so deferred: its output path
/// is known only once `ca` is built and it is resolved.
const CA_NIX: &str = r#"{ seed ? "" }:
rec {
  ca = derivation {
    name = "selfref";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    inherit seed;
    args = [ "-c" "/bin/mkdir $out; echo $out > $out/self; /bin/ln -s $out $out/link; /bin/ln -s $out $dev" ];
  };
  dependent = derivation {
    name = "dependent";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${ca} ${ca.dev} > $out" ];
  };
}
"#;

/// `impure.nix`: `impure`, an impure derivation writing the number in the file
/// `counter` and incrementing it; `pure`, an input-addressed derivation depending on it.
const IMPURE_NIX: &str = r#"{ counter }:
rec {
  impure = derivation {
    name = "impure";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    __impure = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
    inherit counter;
    args = [ "-c" "read n < $counter; echo $((n + 1)) > $counter; echo $n > $out" ];
  };
  pure = derivation {
    name = "pure";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "/bin/cat ${impure} > $out" ];
  };
}
"#;

/// A lab whose daemon (or local real Nix) reads `settings` and whose clients have the
/// experimental features, with `ca.nix` and `impure.nix` written.
fn ca_lab(settings: &str) -> Lab {
    let lab = Lab::new(Some(settings));
    lab.write("client-conf/nix.conf", CLIENT_CONF);
    lab.write("ca.nix", CA_NIX);
    lab.write("impure.nix", IMPURE_NIX);
    lab
}

/// `LAB/ca.nix`, as an argument.
fn ca_nix(lab: &Lab) -> String {
    lab.path("ca.nix").to_str().unwrap().to_owned()
}

/// The lines of `text`.
fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// `nix-build LAB/ca.nix --no-out-link ARGS` through the daemon, which must succeed: the
/// output paths it prints, and its stderr.
fn build_through(lab: &Lab, daemon: &NsDaemon, args: &[&str]) -> (Vec<String>, String) {
    let file = ca_nix(lab);
    let mut all = vec![file.as_str(), "--no-out-link"];
    all.extend_from_slice(args);
    let output = lab.run("nix-build", None, &all);
    expect_success(daemon, "nix-build", &all, &output);
    let paths = lines(String::from_utf8_lossy(&output.stdout).trim());
    (paths, stderr_of(&output))
}

/// `nix-build LAB/ca.nix --no-out-link ARGS` by real Nix on `reference`'s own store: the
/// output paths it prints.
fn build_by_nix(reference: &Lab, args: &[&str]) -> Vec<String> {
    let file = ca_nix(reference);
    let mut all = vec![file.as_str(), "--no-out-link"];
    all.extend_from_slice(args);
    lines(&reference.local_ok("nix-build", &all))
}

/// `nix-instantiate LAB/ca.nix ARGS` through the daemon: the `.drv` path.
fn instantiate(lab: &Lab, daemon: &NsDaemon, args: &[&str]) -> String {
    let file = ca_nix(lab);
    let mut all = vec![file.as_str()];
    all.extend_from_slice(args);
    let drv = lab.run_ok(daemon, "nix-instantiate", &all);
    assert!(
        drv.starts_with("/nix/store/") && drv.ends_with(".drv"),
        "{drv}"
    );
    drv
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The entries of a `nix path-info --json` answer, by path, without the fields that
/// differ between stores (`registrationTime`, `signatures`).
fn path_infos(text: &str) -> Vec<Value> {
    let mut infos = json(text).as_array().cloned().unwrap_or_default();
    for info in &mut infos {
        let object = info.as_object_mut().unwrap();
        object.remove("registrationTime");
        object.remove("signatures");
    }
    infos.sort_by_key(|info| info["path"].as_str().unwrap_or_default().to_owned());
    infos
}

/// The names in the lab store's directory (not its dot-directories).
fn store_entries(lab: &Lab) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(lab.path("nixroot/nix/store"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The base name of a store path, as realisations name their output paths.
fn base_name(path: &str) -> &str {
    path.strip_prefix("/nix/store/")
        .unwrap_or_else(|| panic!("{path:?} is not in /nix/store"))
}

// --- Floating content-addressed outputs -------------------------------------------------

/// Both outputs of the self-referencing CA derivation, built through `arca daemon`, are
/// at the paths real Nix gives them, with its NAR hashes, references and `ca`; the
/// scratch path the builder wrote is replaced by the final one in the file and in the
/// symlinks.
#[test]
fn floating_ca_outputs_are_real_nix_ones_with_self_references_rewritten() {
    let test = "floating_ca_outputs_are_real_nix_ones_with_self_references_rewritten";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA));
    let daemon = NsDaemon::start(&lab, &[]);
    let reference = ca_lab(&nix_conf(CA));

    let (paths, _) = build_through(&lab, &daemon, &["-A", "ca.all"]);
    let [out, dev] = <[String; 2]>::try_from(paths.clone())
        .unwrap_or_else(|_| panic!("nix-build printed {paths:?}, not two output paths"));
    assert!(out.ends_with("-selfref"), "{out}");
    assert!(dev.ends_with("-selfref-dev"), "{dev}");
    assert_eq!(paths, build_by_nix(&reference, &["-A", "ca.all"]));

    // The self-reference is the final path, in the file and in both symlinks.
    assert_eq!(
        fs::read_to_string(lab.physical(&out).join("self")).unwrap(),
        format!("{out}\n")
    );
    assert_eq!(
        fs::read_link(lab.physical(&out).join("link")).unwrap(),
        Path::new(&out)
    );
    assert_eq!(fs::read_link(lab.physical(&dev)).unwrap(), Path::new(&out));
    assert!(valid(&lab, &out) && valid(&lab, &dev));

    let arca = path_infos(&lab.run_ok(&daemon, "nix", &["path-info", "--json", &out, &dev]));
    let nix = path_infos(&reference.local_ok("nix", &["path-info", "--json", &out, &dev]));
    assert_eq!(arca.len(), 2, "{arca:?}");
    for info in &arca {
        let ca = info["ca"].as_str().unwrap_or_default();
        assert!(ca.starts_with("fixed:r:sha256:"), "{info}");
    }
    let by_path = |path: &str| {
        arca.iter()
            .find(|info| info["path"] == path)
            .unwrap()
            .clone()
    };
    assert_eq!(by_path(&out)["references"], serde_json::json!([out]));
    assert_eq!(by_path(&dev)["references"], serde_json::json!([out]));
    assert_eq!(arca, nix, "nix path-info through arca daemon vs real Nix's");
}

/// Early cut-off: the CA derivation with another `seed` is another `.drv` with the same
/// output; the deferred `dependent` built against either resolves to the same
/// derivation, which is not built again. Its output path is real Nix's.
#[test]
fn ca_cut_off_resolves_the_dependent_to_what_is_built_already() {
    let test = "ca_cut_off_resolves_the_dependent_to_what_is_built_already";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA));
    let daemon = NsDaemon::start(&lab, &[]);
    let reference = ca_lab(&nix_conf(CA));

    let one = ["--argstr", "seed", "one"];
    let two = ["--argstr", "seed", "two"];
    let with = |seed: &[&'static str; 3], attribute: &'static str| {
        let mut args = vec!["-A", attribute];
        args.extend_from_slice(seed);
        args
    };

    let (dependent, stderr) = build_through(&lab, &daemon, &with(&one, "dependent"));
    let [dependent_one] = dependent.as_slice() else {
        panic!("nix-build printed {dependent:?}, not one output path");
    };
    assert!(dependent_one.ends_with("-dependent"), "{dependent_one}");
    assert!(
        stderr.contains("-dependent.drv'..."),
        "the dependent was not built: {stderr}"
    );
    let (ca_one, _) = build_through(&lab, &daemon, &with(&one, "ca.all"));

    let (ca_two, stderr) = build_through(&lab, &daemon, &with(&two, "ca.all"));
    assert_eq!(ca_two, ca_one, "another seed, another CA output");
    let selfref_two = instantiate(&lab, &daemon, &with(&two, "ca"));
    assert_ne!(selfref_two, instantiate(&lab, &daemon, &with(&one, "ca")));
    assert!(
        stderr.contains(&format!("building '{selfref_two}'...")),
        "the CA derivation with the other seed was not built: {stderr}"
    );

    let dependent_drv_two = instantiate(&lab, &daemon, &with(&two, "dependent"));
    assert_ne!(
        dependent_drv_two,
        instantiate(&lab, &daemon, &with(&one, "dependent"))
    );
    let (dependent_two, stderr) = build_through(&lab, &daemon, &with(&two, "dependent"));
    assert_eq!(dependent_two, dependent);
    assert!(
        !stderr.contains("building '"),
        "the resolved dependent was built again: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert_eq!(
        fs::read_to_string(lab.physical(dependent_one)).unwrap(),
        format!("{} {}\n", ca_one[0], ca_one[1])
    );

    // Real Nix: the same path for the dependent, with either seed.
    assert_eq!(
        build_by_nix(&reference, &with(&one, "dependent")),
        dependent
    );
    assert_eq!(
        build_by_nix(&reference, &with(&two, "dependent")),
        dependent
    );
}

/// Without `ca-derivations` in the daemon's `experimental-features` the CA derivation
/// is refused with Nix's message, and nothing of it is built; an input-addressed one
/// still builds.
#[test]
fn ca_derivation_is_refused_without_the_experimental_feature() {
    let test = "ca_derivation_is_refused_without_the_experimental_feature";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(""));
    let daemon = NsDaemon::start(&lab, &[]);

    let drv = instantiate(&lab, &daemon, &["-A", "ca"]);
    let file = ca_nix(&lab);
    let output = lab.run("nix-build", None, &[&file, "--no-out-link", "-A", "ca.all"]);
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "the CA derivation built without the feature: {stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        stderr.contains(&format!(
            "derivation '{drv}': experimental Nix feature 'ca-derivations' is disabled"
        )),
        "{stderr}"
    );
    let built: Vec<String> = store_entries(&lab)
        .into_iter()
        .filter(|name| name.contains("-selfref") && !name.ends_with(".drv"))
        .collect();
    assert_eq!(built, Vec::<String>::new(), "outputs of the refused build");

    let plain = lab.derivation("plain", "echo plain > $out");
    let output = lab.run(
        "nix-build",
        None,
        &[plain.to_str().unwrap(), "--no-out-link"],
    );
    expect_success(&daemon, "nix-build", &[], &output);
    let out = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(fs::read_to_string(lab.physical(&out)).unwrap(), "plain\n");
}

// --- Realisations -----------------------------------------------------------------------

/// The realisations Arca records for the CA derivation's outputs and for the resolved
/// dependent (with its dependent realisations) are read by real Nix from Arca's store,
/// and equal those real Nix records building the same; the daemon serves the same.
#[test]
fn real_nix_reads_the_realisations_arca_records() {
    let test = "real_nix_reads_the_realisations_arca_records";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA));
    let daemon = NsDaemon::start(&lab, &[]);
    let reference = ca_lab(&nix_conf(CA));

    let (paths, _) = build_through(&lab, &daemon, &["-A", "ca.all"]);
    let (dependent, _) = build_through(&lab, &daemon, &["-A", "dependent"]);
    build_by_nix(&reference, &["-A", "ca.all"]);
    build_by_nix(&reference, &["-A", "dependent"]);
    let selfref_drv = instantiate(&lab, &daemon, &["-A", "ca"]);
    let dependent_drv = instantiate(&lab, &daemon, &["-A", "dependent"]);

    let query = [
        "realisation",
        "info",
        "--json",
        &selfref_drv,
        &dependent_drv,
    ];
    // Real Nix on Arca's store itself, as it reads its own.
    let read_by_nix = json(&lab.local_ok("nix", &query));
    let nix = json(&reference.local_ok("nix", &query));
    assert_eq!(read_by_nix, nix, "Arca's realisations vs real Nix's");
    let served = json(&lab.run_ok(&daemon, "nix", &query));
    assert_eq!(served, nix, "the daemon's realisations vs real Nix's");

    // And they say what was built; the dependent's names the two it was resolved with.
    let realisations = nix.as_array().unwrap();
    let mut recorded: Vec<&str> = realisations
        .iter()
        .map(|realisation| realisation["outPath"].as_str().unwrap())
        .collect();
    recorded.sort();
    let mut built: Vec<&str> = paths
        .iter()
        .chain(&dependent)
        .map(|path| base_name(path))
        .collect();
    built.sort();
    assert_eq!(recorded, built, "{nix}");
    let mut resolved_with: Vec<&str> = realisations
        .iter()
        .find(|realisation| realisation["outPath"] == base_name(&dependent[0]))
        .and_then(|realisation| realisation["dependentRealisations"].as_object())
        .unwrap_or_else(|| panic!("no dependent realisations: {nix}"))
        .values()
        .map(|path| path.as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = paths.iter().map(|path| base_name(path)).collect();
    expected.sort();
    resolved_with.sort();
    assert_eq!(resolved_with, expected, "{nix}");
}

/// Builds `ca` with `seed` by real Nix on `reference`'s store (signed with the secret
/// key `secret_key` when given) and copies its `.drv`, and its outputs with their
/// realisations, into the binary cache `REFERENCE/cache`: the `.drv` path.
fn cache_ca_outputs(reference: &Lab, seed: &str, secret_key: Option<&Path>) -> String {
    let file = ca_nix(reference);
    let key = secret_key.map(|path| path.to_str().unwrap().to_owned());
    let mut args = vec![file.as_str(), "-A", "ca", "--argstr", "seed", seed];
    if let Some(key) = &key {
        args.extend_from_slice(&["--option", "secret-key-files", key]);
    }
    let drv = reference.local_ok("nix-instantiate", &args);
    args.push("--no-out-link");
    reference.local_ok("nix-build", &args);
    // The `.drv` too: a client copying from the cache reads it there.
    let cache = format!("file://{}", reference.path("cache").display());
    reference.local_ok("nix", &["copy", "--to", &cache, "--derivation", &drv]);
    reference.local_ok("nix", &["copy", "--to", &cache, &drv]);
    drv
}

/// `nix copy --from REFERENCE/cache --to DAEMON DRV` (the outputs and realisations of
/// `drv`) as `user`, or root.
fn copy_from_cache(lab: &Lab, reference: &Lab, user: Option<&Unprivileged>, drv: &str) -> Output {
    let cache = format!("file://{}", reference.path("cache").display());
    lab.run(
        "nix",
        user,
        &["copy", "--from", &cache, "--to", &lab.store_uri(), drv],
    )
}

/// `nix realisation info --json DRV` through the daemon: the realisations of the
/// outputs of `drv`, or the client's error when one of them has none.
fn realisations(lab: &Lab, drv: &str) -> Result<Value, String> {
    let output = lab.run("nix", None, &["realisation", "info", "--json", drv]);
    if output.status.success() {
        Ok(json(String::from_utf8_lossy(&output.stdout).trim()))
    } else {
        Err(stderr_of(&output))
    }
}

/// Panics unless `realisations` is the client's error for an output without one.
fn assert_unrealised(realisations: Result<Value, String>) {
    match realisations {
        Ok(found) => panic!("realisations were recorded: {found}"),
        Err(stderr) => assert!(
            stderr.contains("cannot operate on an output of unbuilt content-addressed derivation"),
            "{stderr}"
        ),
    }
}

/// An untrusted client's `RegisterDrvOutput` of an unsigned realisation (`nix copy` of a
/// CA derivation's outputs from a binary cache, as `nobody`) is refused, although the
/// content-addressed paths themselves are accepted; root's (trusted) is accepted, and
/// the realisation spares the build.
#[test]
fn untrusted_client_cannot_register_an_unsigned_realisation() {
    let test = "untrusted_client_cannot_register_an_unsigned_realisation";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA));
    let nobody = nobody(&lab);
    let daemon = NsDaemon::start(&lab, &[]);
    let reference = ca_lab(&nix_conf(CA));
    let drv = cache_ca_outputs(&reference, "", None);
    // The same `.drv` in Arca's store: the client asks for the realisations of its
    // outputs.
    assert_eq!(instantiate(&lab, &daemon, &["-A", "ca"]), drv);
    let expected = build_by_nix(&reference, &["-A", "ca.all"]);

    let refused = copy_from_cache(&lab, &reference, Some(&nobody), &drv);
    let stderr = stderr_of(&refused);
    assert!(
        !refused.status.success(),
        "nobody registered an unsigned realisation: {stderr}"
    );
    assert!(
        expected.iter().any(|path| stderr.contains(&format!(
            "cannot register realisation '{}' because it lacks a valid signature",
            base_name(path)
        ))),
        "{stderr}"
    );
    // The paths came (content-addressed, so anyone may add them); no realisation did.
    for path in &expected {
        assert!(valid(&lab, path), "{path} was not copied: {stderr}");
    }
    assert_unrealised(realisations(&lab, &drv));

    let accepted = copy_from_cache(&lab, &reference, None, &drv);
    expect_success(&daemon, "nix copy", &[], &accepted);
    let registered = realisations(&lab, &drv).unwrap_or_else(|stderr| panic!("{stderr}"));
    let nix = json(&reference.local_ok("nix", &["realisation", "info", "--json", &drv]));
    assert_eq!(registered, nix);

    // nix-build finds the outputs through the realisations: nothing is built.
    let (paths, stderr) = build_through(&lab, &daemon, &["-A", "ca.all"]);
    assert_eq!(paths, expected);
    assert!(!stderr.contains("building '"), "{stderr}");
}

/// A realisation signed by a key in the daemon's `trusted-public-keys` is accepted from
/// an untrusted client, with its signature; one signed by another key is refused.
#[test]
fn realisation_signed_by_a_trusted_key_is_accepted_from_anyone() {
    let test = "realisation_signed_by_a_trusted_key_is_accepted_from_anyone";
    if !prerequisites(test) {
        return;
    }
    let reference = ca_lab(&nix_conf(CA));
    for name in ["test-1", "other-1"] {
        let secret = reference.path(&format!("{name}.sk"));
        let public = reference.path(&format!("{name}.pk"));
        reference.local_ok(
            "nix-store",
            &[
                "--generate-binary-cache-key",
                name,
                secret.to_str().unwrap(),
                public.to_str().unwrap(),
            ],
        );
    }
    let trusted_drv = cache_ca_outputs(&reference, "trusted", Some(&reference.path("test-1.sk")));
    let other_drv = cache_ca_outputs(&reference, "other", Some(&reference.path("other-1.sk")));
    let public = fs::read_to_string(reference.path("test-1.pk")).unwrap();
    let lab = ca_lab(&format!(
        "{}trusted-public-keys = {}\n",
        nix_conf(CA),
        public.trim()
    ));
    let nobody = nobody(&lab);
    let daemon = NsDaemon::start(&lab, &[]);
    assert_eq!(
        instantiate(&lab, &daemon, &["-A", "ca", "--argstr", "seed", "other"]),
        other_drv
    );
    assert_eq!(
        instantiate(&lab, &daemon, &["-A", "ca", "--argstr", "seed", "trusted"]),
        trusted_drv
    );

    let refused = copy_from_cache(&lab, &reference, Some(&nobody), &other_drv);
    let stderr = stderr_of(&refused);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("lacks a valid signature"), "{stderr}");

    let accepted = copy_from_cache(&lab, &reference, Some(&nobody), &trusted_drv);
    expect_success(&daemon, "nix copy (nobody)", &[], &accepted);
    let registered = realisations(&lab, &trusted_drv).unwrap_or_else(|stderr| panic!("{stderr}"));
    let nix = json(&reference.local_ok("nix", &["realisation", "info", "--json", &trusted_drv]));
    assert_eq!(registered, nix);
    for realisation in registered.as_array().unwrap() {
        let signatures = realisation["signatures"].as_array().unwrap();
        assert!(
            signatures
                .iter()
                .any(|signature| signature.as_str().unwrap().starts_with("test-1:")),
            "{realisation}"
        );
    }
    assert_unrealised(realisations(&lab, &other_drv));
}

// --- Impure derivations -----------------------------------------------------------------

/// `nix build --json -f LAB/impure.nix impure` through the daemon, counting in
/// `counter`: the output path.
fn build_impure(lab: &Lab, daemon: &NsDaemon, counter: &Path) -> String {
    let built = lab.run_ok(
        daemon,
        "nix",
        &[
            "build",
            "--no-link",
            "--json",
            "-f",
            lab.path("impure.nix").to_str().unwrap(),
            "--argstr",
            "counter",
            counter.to_str().unwrap(),
            "impure",
        ],
    );
    let built = json(&built);
    built[0]["outputs"]["out"]
        .as_str()
        .unwrap_or_else(|| panic!("no output in {built}"))
        .to_owned()
}

/// A counter for the impure builder, at 0, in a directory anyone may write (the builder
/// may run as a build user).
fn new_counter(lab: &Lab) -> PathBuf {
    let dir = lab.path("counter");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    lab.write("counter/n", "0\n")
}

/// An impure derivation is built each time it is wanted: two builds, two counts, two
/// content-addressed output paths (the first of which real Nix gives its own first
/// build); none is recorded as a realisation.
#[test]
fn impure_derivation_builds_anew_each_time() {
    let test = "impure_derivation_builds_anew_each_time";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA_IMPURE));
    let daemon = NsDaemon::start(&lab, &[]);
    let counter = new_counter(&lab);

    let first = build_impure(&lab, &daemon, &counter);
    let second = build_impure(&lab, &daemon, &counter);
    assert_ne!(first, second, "the impure derivation was built once");
    assert_eq!(fs::read_to_string(lab.physical(&first)).unwrap(), "0\n");
    assert_eq!(fs::read_to_string(lab.physical(&second)).unwrap(), "1\n");
    assert_eq!(fs::read_to_string(&counter).unwrap(), "2\n");
    for path in [&first, &second] {
        assert!(path.ends_with("-impure"), "{path}");
        let info = json(&lab.run_ok(&daemon, "nix", &["path-info", "--json", path]));
        let ca = info[0]["ca"].as_str().unwrap_or_default();
        assert!(ca.starts_with("fixed:r:sha256:"), "{info}");
    }
    let drv = lab.run_ok(
        &daemon,
        "nix-instantiate",
        &[
            lab.path("impure.nix").to_str().unwrap(),
            "-A",
            "impure",
            "--argstr",
            "counter",
            counter.to_str().unwrap(),
        ],
    );
    assert_unrealised(realisations(&lab, &drv));

    // Real Nix's first build of its own counter (another `.drv`, same contents): the
    // same content-addressed path.
    let reference = ca_lab(&nix_conf(CA_IMPURE));
    let reference_counter = new_counter(&reference);
    let built = json(&reference.local_ok(
        "nix",
        &[
            "build",
            "--no-link",
            "--json",
            "-f",
            reference.path("impure.nix").to_str().unwrap(),
            "--argstr",
            "counter",
            reference_counter.to_str().unwrap(),
            "impure",
        ],
    ));
    assert_eq!(built[0]["outputs"]["out"], first.as_str());
}

/// A pure input-addressed derivation depending on an impure one is refused with Nix's
/// message, before the impure one is built.
#[test]
fn pure_derivation_cannot_depend_on_an_impure_one() {
    let test = "pure_derivation_cannot_depend_on_an_impure_one";
    if !prerequisites(test) {
        return;
    }
    let lab = ca_lab(&nix_conf(CA_IMPURE));
    let daemon = NsDaemon::start(&lab, &[]);
    let counter = new_counter(&lab);
    let file = lab.path("impure.nix");
    let drv = |attribute: &str| {
        lab.run_ok(
            &daemon,
            "nix-instantiate",
            &[
                file.to_str().unwrap(),
                "-A",
                attribute,
                "--argstr",
                "counter",
                counter.to_str().unwrap(),
            ],
        )
    };
    let (pure, impure) = (drv("pure"), drv("impure"));

    let output = lab.run(
        "nix-build",
        None,
        &[
            file.to_str().unwrap(),
            "--no-out-link",
            "-A",
            "pure",
            "--argstr",
            "counter",
            counter.to_str().unwrap(),
        ],
    );
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "the pure derivation built: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "pure derivation '{pure}' depends on impure derivation '{impure}'"
        )),
        "{stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert_eq!(
        fs::read_to_string(&counter).unwrap(),
        "0\n",
        "the impure input was built"
    );
}
