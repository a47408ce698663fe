//! The `arca` command's contract: exit codes (0 ok, 1 failed operation, 2 bad usage),
//! one-line `error: ` messages naming the input at fault, `arca nar ls`/`nar cat` byte for
//! byte against `nix nar ls`/`nix nar cat` and `arca hash file` against `nix hash file` on
//! the golden fixtures (those comparisons need real Nix and are skipped loudly without
//! it), and restore/dump round trips through pipes.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use arca_tests::golden::fixture_trees;
use arca_tests::{arca, arca_bin, fixture, nix, nix_available};
use serde_json::Value;

/// Trees with a committed NAR: (key, manifest entry, NAR file).
fn nar_trees() -> Vec<(String, Value, PathBuf)> {
    let all: Vec<_> = fixture_trees()
        .into_iter()
        .filter_map(|(key, tree)| {
            let nar = fixture(tree["nar"].as_str()?);
            Some((key, tree, nar))
        })
        .collect();
    assert!(all.len() >= 29, "committed NARs are missing");
    all
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run(args: &[OsString]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    arca(&args)
}

/// Runs arca with `stdin` as its standard input.
fn run_with_stdin(args: &[&OsStr], stdin: &[u8]) -> Output {
    arca_tests::store::run(Command::new(arca_bin()).args(args), stdin)
}

fn ok(output: &Output, what: &str) -> Vec<u8> {
    assert!(
        output.status.success(),
        "{what} failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.clone()
}

/// A failed operation: exit 1, nothing on stdout, exactly one stderr line starting with
/// `error: ` that contains every one of `names`.
fn assert_failure(output: &Output, what: &str, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{what}: exit code (stderr {stderr:?})"
    );
    assert!(
        output.stdout.is_empty(),
        "{what}: printed {:?} on stdout",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.starts_with("error: ") && stderr.ends_with('\n') && stderr.lines().count() == 1,
        "{what}: expected one `error: ` line on stderr, got {stderr:?}"
    );
    for name in names {
        assert!(
            stderr.contains(name),
            "{what}: the error should name {name:?}, got {stderr:?}"
        );
    }
}

/// Bad usage: exit 2, nothing on stdout, and (when `mentions` is given) stderr starts
/// with `error: ` and mentions it.
fn assert_usage(args: &[&str], mentions: Option<&str>) {
    let output = run(&os(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "arca {args:?}: bad usage must exit 2 (stderr {stderr:?})"
    );
    assert!(output.stdout.is_empty(), "arca {args:?}: printed on stdout");
    if let Some(mention) = mentions {
        assert!(
            stderr.starts_with("error: ") && stderr.contains(mention),
            "arca {args:?}: stderr should start with `error: ` and mention {mention:?}, got {stderr:?}"
        );
    }
}

fn some_nar() -> PathBuf {
    fixture("trees/mixed.nar")
}

// ---- Exit codes and errors --------------------------------------------------------------

#[test]
fn success_exits_0() {
    let nar = some_nar();
    let nar = nar.to_str().unwrap();
    for args in [
        vec!["hash", "file", nar],
        vec!["hash", "path", nar],
        vec![
            "hash",
            "convert",
            "--to",
            "base32",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ],
        vec!["nar", "ls", nar],
        vec!["nar", "ls", "-R", "-l", nar, "/"],
        vec!["nar", "cat", nar, "/bin/tool"],
        vec!["--help"],
        vec!["hash", "path", "--help"],
    ] {
        let output = run(&os(&args));
        assert_eq!(
            output.status.code(),
            Some(0),
            "arca {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.stdout.is_empty(), "arca {args:?} printed nothing");
    }
}

#[test]
fn bad_usage_exits_2() {
    let nar = some_nar();
    let nar = nar.to_str().unwrap();
    let sha = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_usage(&["hash", "path", "--frobnicate", nar], Some("--frobnicate"));
    assert_usage(&["hash", "path"], Some("error: "));
    assert_usage(&["hash", "file"], Some("error: "));
    assert_usage(&["hash", "path", "--type", "sha257", nar], Some("sha257"));
    assert_usage(&["hash", "file", "--type", "sha257", nar], Some("sha257"));
    assert_usage(
        &["hash", "path", "--base16", "--base32", nar],
        Some("error: "),
    );
    assert_usage(&["hash", "convert", "--to", "base99", sha], Some("base99"));
    assert_usage(&["hash", "convert", sha], Some("--to"));
    assert_usage(&["hash", "convert", "--to", "sri"], Some("error: "));
    assert_usage(
        &["hash", "convert", "--to", "sri", "--type", "sha257", sha],
        Some("sha257"),
    );
    assert_usage(&["nar", "cat", nar], Some("error: "));
    assert_usage(&["nar", "restore"], Some("error: "));
    assert_usage(&["nar", "dump-path"], Some("error: "));
    assert_usage(&["nar", "ls"], Some("error: "));
    assert_usage(&["nar", "ls", "--frobnicate", nar], Some("--frobnicate"));
    assert_usage(&["derivation", "show"], Some("error: "));
    assert_usage(&["frobnicate"], Some("frobnicate"));
    assert_usage(&["hash", "frobnicate"], Some("frobnicate"));
    assert_usage(&[], None);
}

#[test]
fn hash_of_a_missing_path_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file");
    let shown = missing.to_str().unwrap();
    for sub in ["path", "file"] {
        let output = run(&os(&["hash", sub, shown]));
        assert_failure(&output, &format!("arca hash {sub} <missing>"), &[shown]);
    }
    // A missing path after a good one: still exit 1, and the error names the bad one.
    let good = some_nar();
    let output = run(&os(&["hash", "path", good.to_str().unwrap(), shown]));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains(shown),
        "{stderr:?}"
    );
    // `hash file` of a directory is a failed operation too.
    let output = run(&os(&["hash", "file", dir.path().to_str().unwrap()]));
    assert_failure(
        &output,
        "arca hash file <dir>",
        &[dir.path().to_str().unwrap()],
    );
}

#[test]
fn dump_path_of_a_missing_path_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone");
    let shown = missing.to_str().unwrap();
    let output = run(&os(&["nar", "dump-path", shown]));
    assert_failure(&output, "arca nar dump-path <missing>", &[shown]);
}

#[test]
fn nar_restore_into_an_existing_directory_fails_naming_it_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    fs::create_dir(&existing).unwrap();
    fs::write(existing.join("keep"), b"mine").unwrap();
    let nar = fs::read(some_nar()).unwrap();
    let output = run_with_stdin(
        &["nar".as_ref(), "restore".as_ref(), existing.as_os_str()],
        &nar,
    );
    assert_failure(
        &output,
        "arca nar restore <existing dir>",
        &[existing.to_str().unwrap()],
    );
    let names: Vec<_> = fs::read_dir(&existing)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"], "the existing directory was modified");
    assert_eq!(fs::read(existing.join("keep")).unwrap(), b"mine");
}

#[test]
fn nar_restore_of_a_truncated_nar_on_stdin_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar = fs::read(some_nar()).unwrap();
    for cut in [0, 10, nar.len() / 2, nar.len() - 1] {
        let target = dir.path().join(format!("cut-{cut}"));
        let output = run_with_stdin(
            &["nar".as_ref(), "restore".as_ref(), target.as_os_str()],
            &nar[..cut],
        );
        // The input at fault is stdin: the error must say so, or name the target.
        assert_failure(
            &output,
            &format!("arca nar restore of a NAR truncated to {cut} bytes"),
            &[],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(target.to_str().unwrap()) || stderr.contains("stdin") || stderr.contains("standard input"),
            "restore of a NAR truncated to {cut} bytes: the error names neither the target nor stdin: {stderr:?}"
        );
        assert!(
            target.symlink_metadata().is_err(),
            "a failed restore left {target:?} behind"
        );
    }
}

#[test]
fn nar_cat_of_a_directory_or_missing_path_fails_naming_it() {
    let nar = some_nar();
    let nar = nar.to_str().unwrap();
    for path in ["/bin", "/", "/lib/a", "/abs-link"] {
        let output = run(&os(&["nar", "cat", nar, path]));
        let name = path.trim_start_matches('/');
        assert_failure(
            &output,
            &format!("arca nar cat {path} (not a regular file)"),
            &[name],
        );
    }
    let output = run(&os(&["nar", "cat", nar, "/no/such/file"]));
    assert_failure(&output, "arca nar cat <missing>", &["no/such/file"]);
}

#[test]
fn nar_ls_of_a_missing_path_or_file_fails_naming_it() {
    let nar = some_nar();
    let nar_shown = nar.to_str().unwrap();
    let output = run(&os(&["nar", "ls", nar_shown, "/no-such-entry"]));
    assert_failure(&output, "arca nar ls <missing path>", &["no-such-entry"]);
    let output = run(&os(&["nar", "ls", nar_shown, "/bin/tool/below-a-file"]));
    assert_failure(&output, "arca nar ls <below a file>", &["below-a-file"]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nar");
    let output = run(&os(&["nar", "ls", missing.to_str().unwrap()]));
    assert_failure(
        &output,
        "arca nar ls <missing NAR file>",
        &[missing.to_str().unwrap()],
    );
    let output = run(&os(&["nar", "cat", missing.to_str().unwrap(), "/x"]));
    assert_failure(
        &output,
        "arca nar cat <missing NAR file>",
        &[missing.to_str().unwrap()],
    );
    // A file that is not a NAR at all.
    let garbage = dir.path().join("garbage.nar");
    fs::write(&garbage, b"this is not a NAR, not even close").unwrap();
    let output = run(&os(&["nar", "ls", garbage.to_str().unwrap()]));
    assert_failure(
        &output,
        "arca nar ls <not a NAR>",
        &[garbage.to_str().unwrap()],
    );
}

// ---- Round trips through pipes ----------------------------------------------------------

/// `arca nar restore DIR < NAR`, then `arca nar dump-path DIR | arca nar restore DIR2`
/// through a real pipe, then `arca nar dump-path DIR2`: Nix's bytes every time.
#[test]
fn restore_then_dump_round_trips_through_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    for (key, _tree, nar_file) in nar_trees() {
        let nar = fs::read(&nar_file).unwrap();
        let first = dir.path().join(format!("{key}-1"));
        let output = run_with_stdin(
            &["nar".as_ref(), "restore".as_ref(), first.as_os_str()],
            &nar,
        );
        ok(&output, &format!("tree {key}: arca nar restore"));
        assert!(
            output.stdout.is_empty(),
            "tree {key}: restore printed on stdout"
        );

        // dump-path | restore, process to process.
        let second = dir.path().join(format!("{key}-2"));
        let mut dump = Command::new(arca_bin())
            .args(["nar".as_ref(), "dump-path".as_ref(), first.as_os_str()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let restore = Command::new(arca_bin())
            .args(["nar".as_ref(), "restore".as_ref(), second.as_os_str()])
            .stdin(dump.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            dump.wait().unwrap().success(),
            "tree {key}: dump-path failed"
        );
        ok(&restore, &format!("tree {key}: piped restore"));

        let output = arca(&["nar".as_ref(), "dump-path".as_ref(), second.as_os_str()]);
        let again = ok(&output, &format!("tree {key}: arca nar dump-path"));
        assert!(
            again == nar,
            "tree {key}: the NAR changed on the way through the pipes"
        );
    }
}

// ---- Against real Nix -----------------------------------------------------------------

const NIX_FLAGS: [&str; 2] = ["--extra-experimental-features", "nix-command"];

fn nix_cmd(args: &[&OsStr]) -> Vec<u8> {
    let mut all: Vec<&OsStr> = NIX_FLAGS.iter().map(OsStr::new).collect();
    all.extend_from_slice(args);
    nix("nix", &all, None)
}

/// The arguments for a path inside a NAR that Nix 2.8 accepts: `/`-prefixed below the
/// root; the root of a NAR whose root is not a directory must be `""` for `nix nar cat`
/// (Nix 2.8 says "path '/' does not exist" there).
fn nar_path_arg(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    }
}

/// Nix 2.8's `nix nar ls --json` prints no newline after the JSON (newer Nix does); arca
/// prints one. That is the only difference allowed.
fn strip_json_newline(arca_out: &[u8], nix_out: &[u8]) -> Vec<u8> {
    if nix_out.last() != Some(&b'\n') && arca_out.last() == Some(&b'\n') {
        arca_out[..arca_out.len() - 1].to_vec()
    } else {
        arca_out.to_vec()
    }
}

/// Prints every mismatch found comparing `arca` with Nix (to stderr, in full).
fn print_mismatches(mismatches: &[String]) {
    for mismatch in mismatches {
        eprintln!("{mismatch}");
    }
}

/// Fails, listing the first 30, when comparing `command`'s outputs with Nix's found
/// `mismatches` among `compared` outputs.
fn assert_no_mismatches(mismatches: &[String], compared: usize, command: &str) {
    assert!(
        mismatches.is_empty(),
        "{} of {compared} `{command}` outputs differ from Nix's:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn nar_ls_is_byte_identical_to_nix_nar_ls() {
    if !nix_available("nar_ls_is_byte_identical_to_nix_nar_ls") {
        return;
    }
    let flag_sets: [&[&str]; 8] = [
        &[],
        &["-R"],
        &["-l"],
        &["-R", "-l"],
        &["--json"],
        &["--json", "-R"],
        &["--json", "-l"],
        &["--json", "-R", "-l"],
    ];
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (key, tree, nar) in nar_trees() {
        let listing = tree["listing"].as_array().unwrap();
        for (index, entry) in listing.iter().enumerate() {
            let path = entry["path"].as_str().unwrap();
            // Every flag set at the root; one flag set per entry below it, in turn.
            let sets: Vec<&[&str]> = if path.is_empty() {
                flag_sets.to_vec()
            } else {
                vec![flag_sets[index % flag_sets.len()]]
            };
            let path_arg = if path.is_empty() {
                "/".to_owned()
            } else {
                nar_path_arg(path)
            };
            for flags in sets {
                let mut args: Vec<&OsStr> = vec!["nar".as_ref(), "ls".as_ref()];
                args.extend(flags.iter().map(OsStr::new));
                args.push(nar.as_os_str());
                args.push(path_arg.as_ref());
                let theirs = nix_cmd(&args);
                let output = arca(&args);
                compared += 1;
                let what = format!("tree {key}: nar ls {} {path_arg:?}", flags.join(" "));
                if !output.status.success() {
                    mismatches.push(format!(
                        "{what}: arca failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim_end()
                    ));
                    continue;
                }
                let ours = if flags.contains(&"--json") {
                    strip_json_newline(&output.stdout, &theirs)
                } else {
                    output.stdout.clone()
                };
                if ours != theirs {
                    mismatches.push(format!(
                        "{what}:\n  nix:  {:?}\n  arca: {:?}",
                        String::from_utf8_lossy(&theirs),
                        String::from_utf8_lossy(&output.stdout)
                    ));
                }
            }
        }
    }
    print_mismatches(&mismatches);
    assert!(compared > 400, "compared only {compared} listings");
    assert_no_mismatches(&mismatches, compared, "arca nar ls");
}

#[test]
fn nar_cat_is_byte_identical_to_nix_nar_cat() {
    if !nix_available("nar_cat_is_byte_identical_to_nix_nar_cat") {
        return;
    }
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for (key, tree, nar) in nar_trees() {
        for entry in tree["listing"].as_array().unwrap() {
            if entry["type"] != "regular" {
                continue;
            }
            let path_arg = nar_path_arg(entry["path"].as_str().unwrap());
            let args: [&OsStr; 4] = [
                "nar".as_ref(),
                "cat".as_ref(),
                nar.as_os_str(),
                path_arg.as_ref(),
            ];
            let theirs = nix_cmd(&args);
            let output = arca(&args);
            compared += 1;
            let what = format!("tree {key}: nar cat {path_arg:?}");
            if !output.status.success() {
                mismatches.push(format!(
                    "{what}: arca failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim_end()
                ));
            } else if output.stdout != theirs {
                mismatches.push(format!(
                    "{what}: {} bytes from arca, {} from nix",
                    output.stdout.len(),
                    theirs.len()
                ));
            }
        }
    }
    print_mismatches(&mismatches);
    assert!(compared > 200, "compared only {compared} files");
    assert_no_mismatches(&mismatches, compared, "arca nar cat");
}

/// Restores every fixture NAR (with Nix, so this does not depend on arca's restore) and
/// returns the regular files in them.
fn regular_files_restored_by_nix(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (key, tree, nar) in nar_trees() {
        let target = dir.join(&key);
        let bytes = fs::read(&nar).unwrap();
        nix(
            "nix-store",
            &["--restore".as_ref(), target.as_os_str()],
            Some(&bytes),
        );
        for entry in tree["listing"].as_array().unwrap() {
            if entry["type"] == "regular" {
                let path = entry["path"].as_str().unwrap();
                files.push(if path.is_empty() {
                    target.clone()
                } else {
                    target.join(path)
                });
            }
        }
    }
    files
}

#[test]
fn hash_file_matches_nix_hash_file_in_every_algorithm_and_encoding() {
    if !nix_available("hash_file_matches_nix_hash_file_in_every_algorithm_and_encoding") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut files = regular_files_restored_by_nix(dir.path());
    let big = dir.path().join("big-file");
    fs::write(
        &big,
        (0..2_097_155u64)
            .map(|i| ((i * 7 + i / 4096) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    files.push(big);
    assert!(files.len() > 200, "{} files", files.len());
    let mut runs: Vec<Vec<&str>> = vec![vec![]]; // defaults: SRI sha256
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        for flag in ["--base16", "--base32", "--base64", "--sri"] {
            runs.push(vec!["--type", algo, flag]);
        }
    }
    for flags in runs {
        let mut args: Vec<&OsStr> = vec!["hash".as_ref(), "file".as_ref()];
        args.extend(flags.iter().map(OsStr::new));
        args.extend(files.iter().map(|f| f.as_os_str()));
        let theirs = String::from_utf8(nix_cmd(&args)).unwrap();
        let ours = String::from_utf8(ok(&arca(&args), "arca hash file")).unwrap();
        assert_eq!(
            theirs.lines().count(),
            files.len(),
            "nix hash file {flags:?}"
        );
        for ((file, a), n) in files.iter().zip(ours.lines()).zip(theirs.lines()) {
            assert_eq!(a, n, "arca hash file {flags:?} {}", file.display());
        }
        assert_eq!(ours, theirs, "arca hash file {flags:?}");
    }
}

/// A store argument that names nothing Arca opens says what would do; a daemon that is
/// not there is reported with its cause once.
#[test]
fn bad_stores_are_named_with_what_would_do_and_each_cause_once() {
    let path = "/nix/store/00000000000000000000000000000000-x";
    let output = run(&os(&["--store", "bogus://x", "path-info", path]));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("'unix:///path/to/socket', 'daemon', 'ssh://HOST' or 'ssh-ng://HOST'"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon");
    let store = format!("unix://{}", socket.display());
    let output = run(&os(&["--store", &store, "path-info", path]));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is repeated: {stderr}"
    );
}

/// `arca completions SHELL` prints a script the shell accepts: bash registers it, and it
/// knows the subcommands.
#[test]
fn completions_are_scripts_the_shells_accept() {
    let bash = run(&os(&["completions", "bash"]));
    let script = String::from_utf8(ok(&bash, "arca completions bash")).unwrap();
    assert!(
        script.contains("path-info") && script.contains("add-path"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("arca.bash");
    fs::write(&file, &script).unwrap();
    let registered = Command::new("bash")
        .arg("-c")
        .arg(format!("source {}; complete -p arca", file.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&registered.stdout).contains("_arca"),
        "bash did not register the completion: {}",
        String::from_utf8_lossy(&registered.stderr)
    );
    for (shell, marker) in [("zsh", "#compdef arca"), ("fish", "complete -c arca")] {
        let output = run(&os(&["completions", shell]));
        let script = String::from_utf8(ok(&output, shell)).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
    }
    assert_usage(&["completions", "tcsh"], Some("tcsh"));
}

/// `-v` says what a command does (in plain text when stderr is not a terminal).
#[test]
fn verbose_says_what_add_path_and_verify_do() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("f"), "hi\n").unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    let add = run(&os(&[
        "--store",
        store,
        "-v",
        "store",
        "add-path",
        source.to_str().unwrap(),
    ]));
    let path = String::from_utf8(ok(&add, "add-path")).unwrap();
    let stderr = String::from_utf8_lossy(&add.stderr);
    assert!(
        stderr.contains(&format!(
            "adding '{}' as '{}'",
            source.display(),
            path.trim()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "escape sequences in a pipe: {stderr:?}"
    );
    let verify = run(&os(&[
        "--store",
        store,
        "-v",
        "store",
        "verify",
        "--check-contents",
    ]));
    ok(&verify, "verify");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(stderr.contains("checked 1 paths: 0 problems"), "{stderr}");
    // Without -v, nothing of it.
    let quiet = run(&os(&["--store", store, "store", "verify"]));
    ok(&quiet, "verify");
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

/// `--version` names the source revision it was built from.
#[test]
fn version_names_the_revision() {
    let output = run(&os(&["--version"]));
    let text = String::from_utf8(ok(&output, "--version")).unwrap();
    let line = text.trim();
    let revision = line
        .strip_prefix(concat!("arca ", env!("CARGO_PKG_VERSION"), " ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no revision in {line:?}"));
    assert!(!revision.is_empty(), "{line:?}");
}
