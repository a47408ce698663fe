//! Builds that start early: with a free slot and nothing ready, `arca build` prepares the
//! sandbox of a derivation whose inputs are still being built, and binds those inputs
//! (and what they refer to) only once they are. What the builder sees, what the output
//! records, and what happens when an input fails must be as if it had started late.
//!
//! `-vv` shows when a sandbox is prepared early, so each test checks that its premise
//! held. A static busybox is needed (skipped loudly without it, an error in CI).

use arca_tests::build::Scratch;
use serde_json::Value;

/// `arca -vv build --max-jobs 2 TARGETS`: status, stdout lines and stderr.
fn build_verbose(scratch: &Scratch, targets: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let output = scratch.arca(&[&["-vv", "build", "--max-jobs", "2"][..], targets].concat());
    (
        output.status.code(),
        arca_tests::store::lines(&output.stdout),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn references(scratch: &Scratch, path: &str) -> Vec<String> {
    let info = scratch.arca_path_info(&[path]);
    let mut refs: Vec<String> = info[0]["references"]
        .as_array()
        .expect("references")
        .iter()
        .map(|r| r.as_str().expect("a path").to_owned())
        .collect();
    refs.sort();
    refs
}

#[test]
fn inputs_built_while_the_sandbox_was_prepared_are_bound_with_their_closure() {
    let Some((scratch, bb)) = Scratch::with_busybox(
        "inputs_built_while_the_sandbox_was_prepared_are_bound_with_their_closure",
    ) else {
        return;
    };
    // a is slow; b refers to a and reads it; c only names b, but reads a through b's
    // reference, so a must be bound for c although c never named it.
    let a = scratch.add_derivation(&bb, "a", "sleep 0.5; echo A > $out", &[], &[]);
    let a_out = scratch.arca_output(&a);
    let b = scratch.add_derivation(
        &bb,
        "b",
        "sleep 0.3; echo $a > $out; cat $a >> $out",
        &[("a", &a_out)],
        &[&a],
    );
    let b_out = scratch.arca_output(&b);
    let c = scratch.add_derivation(
        &bb,
        "c",
        "cat $(head -n 1 $b) > $out; cat $b >> $out",
        &[("b", &b_out)],
        &[&b],
    );
    let c_out = scratch.arca_output(&c);

    let (status, printed, stderr) = build_verbose(&scratch, &[&c]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(printed, std::slice::from_ref(&c_out));
    for (drv, input) in [(&b, &a_out), (&c, &b_out)] {
        assert!(
            stderr.contains(&format!(
                "preparing the sandbox of '{drv}' while {input} is built"
            )),
            "the premise: {drv} starts early\n{stderr}"
        );
    }
    // Prepared long before their inputs were built, so the worker that built each input
    // started them at once.
    for (drv, input) in [(&b, &a), (&c, &b)] {
        assert!(
            stderr.contains(&format!(
                "starting the builder of '{drv}', prepared early, as '{input}' is built"
            )),
            "{drv} is started by the worker that built {input}\n{stderr}"
        );
    }
    let read = |path: &str| std::fs::read_to_string(scratch.arca_physical(path)).unwrap();
    assert_eq!(read(&b_out), format!("{a_out}\nA\n"));
    assert_eq!(read(&c_out), format!("A\n{a_out}\nA\n"));
    // References to inputs bound late are found like any other.
    assert_eq!(references(&scratch, &b_out), std::slice::from_ref(&a_out));
    assert_eq!(references(&scratch, &c_out), std::slice::from_ref(&a_out));
    // "building" is said when the builder starts: after its input is built.
    let position = |needle: &str| stderr.find(needle).expect(needle);
    assert!(
        position(&format!("building '{b}'")) > position(&format!("building '{a}'")),
        "{stderr}"
    );

    arca_tests::store::assert_arca_verify_clean(&scratch.arca_root(), "after early builds");
}

#[test]
fn a_build_prepared_while_its_input_failed_never_runs_and_leaves_nothing() {
    let Some((scratch, bb)) = Scratch::with_busybox(
        "a_build_prepared_while_its_input_failed_never_runs_and_leaves_nothing",
    ) else {
        return;
    };
    let fail = scratch.add_derivation(&bb, "fail", "sleep 0.5; exit 1", &[], &[]);
    let after = scratch.add_derivation(&bb, "after", "echo ran > $out", &[], &[&fail]);
    let after_out = scratch.arca_output(&after);

    for keep_going in [false, true] {
        let mut targets = vec![after.as_str()];
        if keep_going {
            targets.insert(0, "--keep-going");
        }
        let (status, printed, stderr) = build_verbose(&scratch, &targets);
        assert_eq!(status, Some(1), "{stderr}");
        assert!(printed.is_empty(), "{printed:?}");
        assert!(
            stderr.contains(&format!(
                "dropping the prepared sandbox of '{after}': an input was not built"
            )),
            "the premise: {after} was prepared early\n{stderr}"
        );
        assert!(
            !stderr.contains(&format!("building '{after}'")),
            "a build that never ran is not announced\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("builder for '{fail}' failed with exit code 1")),
            "{stderr}"
        );
        scratch.assert_nothing_left(&after, &after_out);
        // No log for a build that never ran.
        let log = scratch.arca(&["log", &after]);
        assert!(!log.status.success(), "a log of {after} was stored");
    }
}

#[test]
fn a_fan_in_starts_early_only_once_all_but_running_inputs_are_built() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("a_fan_in_starts_early_only_once_all_but_running_inputs_are_built")
    else {
        return;
    };
    // Three slow leaves on two slots: the root may start early only when the third
    // leaf runs, and then binds all three.
    let leaves: Vec<String> = (0..3)
        .map(|i| {
            scratch.add_derivation(
                &bb,
                &format!("leaf-{i}"),
                &format!("sleep 0.3; echo {i} > $out"),
                &[],
                &[],
            )
        })
        .collect();
    let leaf_refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
    let outs: Vec<String> = leaves.iter().map(|d| scratch.arca_output(d)).collect();
    let deps = outs.join(" ");
    let root = scratch.add_derivation(
        &bb,
        "root",
        "cat $deps > $out",
        &[("deps", &deps)],
        &leaf_refs,
    );
    let root_out = scratch.arca_output(&root);
    let (status, printed, stderr) = build_verbose(&scratch, &[&root]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(printed, std::slice::from_ref(&root_out));
    assert!(
        stderr.contains(&format!("preparing the sandbox of '{root}' while")),
        "the premise: root starts early\n{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.arca_physical(&root_out)).unwrap(),
        "0\n1\n2\n"
    );
    let info: Vec<Value> = scratch.arca_path_info(&[&root_out]);
    assert!(info[0]["references"].as_array().unwrap().is_empty());
}

#[test]
fn a_chain_is_prepared_two_links_ahead() {
    let Some((scratch, bb)) = Scratch::with_busybox("a_chain_is_prepared_two_links_ahead") else {
        return;
    };
    // a → b → c → d, on two slots, each a 0.3 s build: while b builds (itself started
    // early), c waits at its gate and d is prepared already, so that a sandbox is always
    // ready when a build ends.
    let mut drvs: Vec<String> = Vec::new();
    let mut outs: Vec<String> = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (script, env, inputs) = match (drvs.last(), outs.last()) {
            (Some(drv), Some(out)) => (
                "sleep 0.3; cat $in > $out; echo . >> $out",
                vec![("in", out.as_str())],
                vec![drv.as_str()],
            ),
            _ => ("sleep 0.3; echo . > $out", vec![], vec![]),
        };
        let drv = scratch.add_derivation(&bb, name, script, &env, &inputs);
        outs.push(scratch.arca_output(&drv));
        drvs.push(drv);
    }
    let (status, printed, stderr) = build_verbose(&scratch, &[&drvs[3]]);
    assert_eq!(status, Some(0), "{stderr}");
    assert_eq!(printed, std::slice::from_ref(&outs[3]));
    let position = |needle: &str| stderr.find(needle).expect(needle);
    let (b, c, d) = (&drvs[1], &drvs[2], &drvs[3]);
    // One link ahead only, d could be picked once b's build was over, after the worker
    // that finished it had started c (and said so). (When b's own thread says "building"
    // is a race with the other threads' messages: not compared.)
    assert!(
        position(&format!("preparing the sandbox of '{d}'"))
            < position(&format!(
                "starting the builder of '{c}', prepared early, as '{b}' is built"
            )),
        "d is prepared while b builds\n{stderr}"
    );
    let read = |path: &str| std::fs::read_to_string(scratch.arca_physical(path)).unwrap();
    assert_eq!(read(&outs[3]), ".\n.\n.\n.\n");
}
