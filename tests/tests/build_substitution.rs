//! Substitution in `arca build` (issue #16): a store builds derivations another store
//! built and pushed to a signed `file://` cache, and gets their outputs from the cache
//! instead of building them — unless `allowSubstitutes = false`, or the signature is
//! not trusted (or a substituter does not answer); `preferLocalBuild` changes nothing
//! (Nix 2.8); a NAR gone fails the build with Nix's message, and with `fallback` the
//! derivation is built instead.
//!
//! Every builder writes a random UUID and the time it ran into its output, so an output
//! built again has other contents (another NAR hash) than the one in the cache:
//! comparing hashes tells a substituted output from a rebuilt one, and so does what the
//! build said (`copying path` or `building`).

use std::path::Path;

use arca_tests::build::Scratch;
use arca_tests::store::lines;

/// The script of every derivation: its dependency's contents (if any), then the time.
const SCRIPT: &str =
    "{ [ -n \"$dep\" ] && cat $dep; cat /proc/sys/kernel/random/uuid; date +%s%N; } > $out";

struct Fixture {
    /// The store that built everything and pushed it.
    built: Scratch,
    /// A fresh store with the same derivations, nothing built.
    fresh: Scratch,
    cache: String,
    public_key: String,
}

/// Derivations `name`: `name-dep`, and `name` depending on it, with `env` on both; in
/// `scratch`, whose busybox path is `bb`. The top `.drv` path.
fn chain(scratch: &Scratch, bb: &str, name: &str, env: &[(&str, &str)]) -> String {
    let dep = scratch.add_derivation(bb, &format!("{name}-dep"), SCRIPT, env, &[]);
    let dep_out = scratch.arca_output(&dep);
    let mut top_env = env.to_vec();
    top_env.push(("dep", &dep_out));
    scratch.add_derivation(bb, name, SCRIPT, &top_env, &[&dep])
}

const CHAINS: &[(&str, &[(&str, &str)])] = &[
    ("plain", &[]),
    ("no-subst", &[("allowSubstitutes", "")]),
    ("prefer-local", &[("preferLocalBuild", "1")]),
    ("gone", &[]),
];

fn fixture(test: &str) -> Option<(Fixture, Vec<String>)> {
    let (built, bb) = Scratch::with_busybox(test)?;
    let drvs: Vec<String> = CHAINS
        .iter()
        .map(|(name, env)| chain(&built, &bb, name, env))
        .collect();
    let mut outputs = built.arca_build_ok(&drvs.iter().map(String::as_str).collect::<Vec<_>>());
    // The dependencies' outputs too: the tops do not refer to them (they copy their
    // contents), so their closures do not hold them.
    for drv in &drvs {
        for input in lines(&built.arca_ok(&["store", "query", "--references", drv])) {
            if input.ends_with("-dep.drv") {
                outputs.push(built.arca_output(&input));
            }
        }
    }
    let secret = built.arca_ok(&["key", "generate-secret", "--key-name", "farm-1"]);
    let sk = built.path().join("farm.sk");
    std::fs::write(&sk, &secret).unwrap();
    let public_key =
        String::from_utf8(built.arca_ok_with(&["key", "convert-secret-to-public"], &secret))
            .unwrap();
    let cache = format!("file://{}", built.path().join("cache").display());
    let to = format!("{cache}?secret-key={}&compression=zstd", sk.display());
    let mut args = vec!["copy", "--logs", "--to", to.as_str()];
    args.extend(outputs.iter().map(String::as_str));
    built.arca_ok(&args);

    let (fresh, fresh_bb) = Scratch::with_busybox(test)?;
    assert_eq!(fresh_bb, bb, "busybox has the same path in both stores");
    for ((name, env), drv) in CHAINS.iter().zip(&drvs) {
        assert_eq!(&chain(&fresh, &bb, name, env), drv);
    }
    Some((
        Fixture {
            built,
            fresh,
            cache,
            public_key,
        },
        drvs,
    ))
}

impl Fixture {
    /// `arca build DRV` in the fresh store with the cache as substituter and `options`.
    fn build(&self, drv: &str, options: &[&str]) -> std::process::Output {
        let mut args = vec![
            "build",
            drv,
            "--option",
            "substituters",
            &self.cache,
            "--option",
            "trusted-public-keys",
            &self.public_key,
        ];
        args.extend(options);
        self.fresh.arca(&args)
    }

    /// Whether `drv`'s output in the fresh store is the one the cache has (substituted),
    /// not one built again; what `build` (the command that made it valid) said agrees.
    fn substituted(&self, drv: &str, build: &std::process::Output) -> bool {
        let output = self.fresh.arca_output(drv);
        let hash = |scratch: &Scratch| scratch.arca_path_info(&[&output])[0]["narHash"].clone();
        let same = hash(&self.fresh) == hash(&self.built);
        let said = stderr(build);
        let built = said.contains(&format!("building '{drv}'"));
        let copied = said.contains(&format!("copying path '{output}'"));
        // ("copying" is said before a fetch that may fail, and the build follows.)
        assert_eq!(
            (same, same || !copied || built),
            (!built, true),
            "{drv}: the output and what the build said disagree: {said}"
        );
        same
    }
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn builds_substitute_what_a_trusted_cache_has() {
    let Some((fixture, drvs)) = fixture("builds_substitute_what_a_trusted_cache_has") else {
        return;
    };
    let [plain, no_subst, prefer_local, _] = &drvs[..] else {
        unreachable!()
    };
    // Untrusted: built, with no word of the cache's paths being taken.
    let other_secret = fixture
        .fresh
        .arca_ok(&["key", "generate-secret", "--key-name", "other-1"]);
    let other_key = String::from_utf8(
        fixture
            .fresh
            .arca_ok_with(&["key", "convert-secret-to-public"], &other_secret),
    )
    .unwrap();
    // A substituter nobody answers at comes first: it is disabled with a warning.
    let substituters = format!("http://127.0.0.1:9 {}", fixture.cache);
    let untrusted = fixture.fresh.arca(&[
        "build",
        plain,
        "--option",
        "substituters",
        &substituters,
        "--option",
        "trusted-public-keys",
        &other_key,
    ]);
    assert!(untrusted.status.success(), "{}", stderr(&untrusted));
    assert!(
        stderr(&untrusted).contains("warning: disabling substituter 'http://127.0.0.1:9'"),
        "{}",
        stderr(&untrusted)
    );
    assert!(
        !fixture.substituted(plain, &untrusted),
        "substituted from an untrusted cache"
    );
    let dep = fixture
        .fresh
        .arca_ok(&["store", "query", "--references", plain]);
    assert!(!lines(&dep).is_empty());

    // A fresh store again for the trusted case: delete what was built.
    let output = fixture.fresh.arca_output(plain);
    fixture.fresh.arca_ok(&["store", "delete", &output]);
    let built = fixture.build(plain, &[]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(fixture.substituted(plain, &built));
    assert!(
        stderr(&built).contains("copying path"),
        "{}",
        stderr(&built)
    );

    // allowSubstitutes = false: built (its dependency too: the same attribute).
    let built = fixture.build(no_subst, &[]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(!fixture.substituted(no_subst, &built));

    // preferLocalBuild: substituted all the same, as Nix 2.8 does.
    let built = fixture.build(prefer_local, &[]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(fixture.substituted(prefer_local, &built));
    // Its build log: not in this store, but in the cache (`copy --logs`), where `arca
    // log` finds it through the substituters.
    assert!(!fixture.fresh.arca(&["log", prefer_local]).status.success());
    let from_cache = fixture.fresh.arca_ok(&[
        "log",
        prefer_local,
        "--option",
        "substituters",
        &fixture.cache,
    ]);
    assert_eq!(from_cache, fixture.built.arca_ok(&["log", prefer_local]));
    // The fresh store's copies check out.
    fixture
        .fresh
        .arca_ok(&["store", "verify", "--check-contents"]);
}

#[test]
fn a_nar_gone_fails_the_build_unless_fallback_builds_it() {
    let Some((fixture, drvs)) = fixture("a_nar_gone_fails_the_build_unless_fallback_builds_it")
    else {
        return;
    };
    let gone = &drvs[3];
    let output = fixture.built.arca_output(gone);
    let cache_dir = fixture.built.path().join("cache");
    remove_nar_of(&cache_dir, &output);

    let failed = fixture.build(gone, &[]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("some substitutes for the outputs of derivation"),
        "{}",
        stderr(&failed)
    );
    assert!(
        stderr(&failed).contains("but not its NAR"),
        "{}",
        stderr(&failed)
    );
    assert!(!fixture.fresh.arca_registered(&output));

    let built = fixture.build(gone, &["--option", "fallback", "true"]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(!fixture.substituted(gone, &built), "built, not substituted");
    // Its dependency's NAR is still there: substituted.
    let dep_drv = lines(
        &fixture
            .fresh
            .arca_ok(&["store", "query", "--references", gone]),
    )
    .into_iter()
    .find(|path| path.ends_with("-gone-dep.drv"))
    .expect("the dependency's derivation is an input");
    let dep = fixture.fresh.arca_output(&dep_drv);
    let dep_hash = |scratch: &Scratch| scratch.arca_path_info(&[&dep])[0]["narHash"].clone();
    assert_eq!(dep_hash(&fixture.fresh), dep_hash(&fixture.built));
}

/// Deletes the NAR of `path` from the `file://` cache in `dir`.
fn remove_nar_of(dir: &Path, path: &str) {
    let store_dir = arca_store_core::StoreDir::default();
    let parsed = store_dir.parse_path(path).unwrap();
    let narinfo = dir.join(arca_cache::NarInfo::file_name(&parsed));
    let text = std::fs::read_to_string(narinfo).unwrap();
    let info = arca_cache::NarInfo::parse(&store_dir, &text, "test").unwrap();
    std::fs::remove_file(dir.join(info.url)).unwrap();
}

/// A NAR gone from the first substituter is fetched from the next one that has the
/// path, as Nix tries the next substituter: the build substitutes, builds nothing.
#[test]
fn a_nar_gone_from_one_cache_comes_from_the_next() {
    let Some((fixture, drvs)) = fixture("a_nar_gone_from_one_cache_comes_from_the_next") else {
        return;
    };
    let gone = &drvs[3];
    let output = fixture.built.arca_output(gone);
    let first = fixture.built.path().join("cache");
    let second = fixture.built.path().join("second-cache");
    let copied = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&first)
        .arg(&second)
        .status()
        .unwrap();
    assert!(copied.success());
    remove_nar_of(&first, &output);
    let both = format!("{} file://{}", fixture.cache, second.display());
    let built = fixture.fresh.arca(&[
        "build",
        gone,
        "--option",
        "substituters",
        &both,
        "--option",
        "trusted-public-keys",
        &fixture.public_key,
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    assert!(fixture.substituted(gone, &built), "{}", stderr(&built));
}
