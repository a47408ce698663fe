//! Derivation features as Nix 2.8 has them, built by `arca build` with busybox as the
//! builder: placeholders, `exportReferencesGraph`, `allowedRequisites` and an output's
//! reference to itself, and `requiredSystemFeatures` against `system-features`.

use arca_tests::build::Scratch;
use arca_tests::store::lines;

/// What `builtins.placeholder "out"` gives in Nix 2.8 (`nix eval --raw --expr
/// 'builtins.placeholder "out"'`).
const OUT_PLACEHOLDER: &str = "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9";

#[test]
fn placeholders_reach_the_builder_as_output_paths() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("placeholders_reach_the_builder_as_output_paths")
    else {
        return;
    };
    let dest = format!("{OUT_PLACEHOLDER}/file");
    let drv = scratch.add_derivation(
        &bb,
        "placeholders",
        &format!("mkdir $out; echo hi > $dest; echo \"{OUT_PLACEHOLDER}\" > $out/arg"),
        &[("dest", &dest)],
        &[],
    );
    let out = scratch.arca_output(&drv);
    assert_eq!(scratch.arca_build_ok(&[&drv]), std::slice::from_ref(&out));
    let physical = scratch.arca_physical(&out);
    assert_eq!(
        std::fs::read_to_string(physical.join("file")).unwrap(),
        "hi\n"
    );
    // In the arguments too (the script is an argument of `sh -c`).
    assert_eq!(
        std::fs::read_to_string(physical.join("arg")).unwrap(),
        format!("{out}\n")
    );
}

#[test]
fn export_references_graph_writes_the_closure_in_registration_format() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("export_references_graph_writes_the_closure_in_registration_format")
    else {
        return;
    };
    // The dependency refers to busybox (its PATH is written out).
    let dep = scratch.add_derivation(&bb, "dep", "echo $PATH > $out", &[], &[]);
    let dep_out = scratch.arca_output(&dep);
    let drv = scratch.add_derivation(
        &bb,
        "graph",
        "cat graph > $out",
        &[
            ("exportReferencesGraph", &format!("graph {dep_out}")),
            ("dep", &dep_out),
        ],
        &[&dep],
    );
    let out = scratch.arca_output(&drv);
    scratch.arca_build_ok(&[&drv]);
    let graph = std::fs::read_to_string(scratch.arca_physical(&out)).unwrap();
    // Per path of the closure, in store path order: the path, an empty deriver line,
    // the number of references, the references.
    let mut closure = vec![bb.clone(), dep_out.clone()];
    closure.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    let mut expected = String::new();
    for path in &closure {
        let references = lines(&scratch.arca_ok(&["store", "query", "--references", path]));
        expected.push_str(&format!("{path}\n\n{}\n", references.len()));
        for reference in references {
            expected.push_str(&format!("{reference}\n"));
        }
    }
    assert_eq!(graph, expected);
    assert!(
        graph.contains(&format!("{dep_out}\n\n1\n{bb}\n")),
        "{graph}"
    );

    // Only inputs may be exported.
    let stray = scratch.add_derivation(
        &bb,
        "stray",
        "cat graph > $out",
        &[("exportReferencesGraph", &format!("graph {dep_out}"))],
        &[],
    );
    let stderr = scratch.arca_build_fails(&[&stray]);
    assert!(
        stderr.contains(&format!(
            "cannot export references of path '{dep_out}' because it is not in the input closure of the derivation"
        )),
        "{stderr}"
    );
}

#[test]
fn an_outputs_reference_to_itself_is_not_a_forbidden_requisite() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("an_outputs_reference_to_itself_is_not_a_forbidden_requisite")
    else {
        return;
    };
    // Nothing is allowed, but the output refers only to itself: Nix accepts it.
    let drv = scratch.add_derivation(
        &bb,
        "self-only",
        "mkdir $out; ln -s $out $out/self",
        &[("allowedRequisites", "")],
        &[],
    );
    let out = scratch.arca_output(&drv);
    assert_eq!(scratch.arca_build_ok(&[&drv]), std::slice::from_ref(&out));
    // A real requisite is still refused.
    let refers = scratch.add_derivation(
        &bb,
        "refers-bb",
        "mkdir $out; ln -s $out $out/self; echo $PATH > $out/path",
        &[("allowedRequisites", "")],
        &[],
    );
    let stderr = scratch.arca_build_fails(&[&refers]);
    assert!(
        stderr.contains("is not allowed to refer to the following paths"),
        "{stderr}"
    );
    assert!(stderr.contains(&bb), "{stderr}");
    let refers_out = scratch.arca_output(&refers);
    assert!(
        !stderr.contains(&format!("\n  {refers_out}")),
        "its own path is not listed: {stderr}"
    );
}

#[test]
fn required_system_features_must_be_among_the_system_features() {
    let Some((scratch, bb)) =
        Scratch::with_busybox("required_system_features_must_be_among_the_system_features")
    else {
        return;
    };
    let drv = scratch.add_derivation(
        &bb,
        "needs-gpu",
        "echo done > $out",
        &[("requiredSystemFeatures", "gpu")],
        &[],
    );
    let stderr = scratch.arca_build_fails(&[&drv]);
    assert!(
        stderr.contains(&format!(
            "a 'x86_64-linux' with features {{gpu}} is required to build '{drv}', but I am a 'x86_64-linux' with features {{"
        )),
        "{stderr}"
    );
    let out = scratch.arca_output(&drv);
    // Offered through a setting, it builds.
    assert_eq!(
        scratch.arca_build_ok(&["--option", "system-features", "gpu", &drv]),
        [out]
    );
}
