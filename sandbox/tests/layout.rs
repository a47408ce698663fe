//! What the sandbox looks like from inside (identity, names, /dev, user namespace) and how
//! a bad spec is reported.

mod common;

use std::path::{Path, PathBuf};

use arca_sandbox::{
    standard_etc, Devices, Identity, Mount, Outcome, SandboxError, SetupStep, UserNamespace,
};
use common::{busybox, require_root, run_err, run_ok, sh};

#[test]
fn hostname_domainname_and_identity_are_as_specified() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh(
        r#"echo "$(id -u) $(id -g) $(id -G) $(id -un) $(id -gn)"; hostname; uname -n; cat /proc/sys/kernel/domainname"#,
    );
    spec.identity = Identity {
        uid: 4321,
        gid: 4322,
        user_name: "builder".into(),
        group_name: "builders".into(),
        home: "/homeless".into(),
    };
    let etc = standard_etc(&spec.identity);
    spec.mounts.splice(0..3, etc);
    spec.hostname = "arcabox".into();
    spec.domainname = "arca.example".into();
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "4321 4322 4322 builder builders\narcabox\narcabox\narca.example\n"
    );
}

#[test]
fn default_identity_and_names() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, out) = run_ok(&sh(
        r#"id; id -G; hostname; grep nixbld /etc/passwd; pwd; umask"#,
    ));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "uid=1000(nixbld) gid=100(nixbld)\n100\nlocalhost\n\
         nixbld:x:1000:100:Nix build user:/build:/noshell\n/build\n0022\n"
    );
}

/// Nix sets the domain name to the string "(none)" (the kernel's own initial value), which
/// the spec's default spells the same way.
#[test]
fn default_domainname_reads_none_like_nix() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let (report, out) = run_ok(&sh("cat /proc/sys/kernel/domainname"));
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "(none)\n");
}

#[test]
fn dev_holds_exactly_the_minimal_set() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("echo $(ls /dev); echo $(ls /dev/pts)");
    spec.devices = Devices { kvm: false };
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero\nptmx\n"
    );
}

#[test]
fn dev_has_kvm_only_when_asked_and_the_host_has_it() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("echo $(ls /dev)");
    spec.devices = Devices { kvm: true };
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let kvm = if Path::new("/dev/kvm").exists() {
        "kvm "
    } else {
        ""
    };
    assert_eq!(
        out,
        format!("fd full {kvm}null ptmx pts random shm stderr stdin stdout tty urandom zero\n")
    );
}

#[test]
fn device_nodes_behave() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh(r#"
        echo discarded > /dev/null && echo "null ok"
        echo "zero $(head -c 4 /dev/zero | tr '\0' z)"
        echo "urandom $(head -c 16 /dev/urandom | wc -c)"
        echo x > /dev/full; echo "full status $?"
        echo shared > /dev/shm/f && cat /dev/shm/f
        cat /dev/stdin; echo "stdin status $?""#);
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(
        out,
        "null ok\nzero zzzz\nurandom 16\nsh: write error: No space left on device\nfull status 1\nshared\nstdin status 0\n"
    );
}

/// `host_ids` picks the host user the inside identity maps to: files the program makes in
/// a writable bind belong to that user on the host.
#[test]
fn user_namespace_with_host_ids_maps_the_identity_to_them() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let dir = common::tempdir();
    common::make_world_writable(dir.path());
    let mut spec = sh("id; cat /proc/self/uid_map /proc/self/gid_map; echo x > /out/file; stat -c '%u %g' /out/file")
        .mount(Mount::bind_rw(dir.path(), "/out"));
    spec.user_namespace = UserNamespace::Always;
    spec.host_ids = Some((65534, 65534));
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "uid=1000(nixbld)",
            "gid=100(nixbld)",
            "1000",
            "65534",
            "1",
            "100",
            "65534",
            "1",
            "1000",
            "100"
        ],
        "{out}"
    );
    // The file belongs to the mapped host ids.
    let meta = std::fs::metadata(dir.path().join("file")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta)
        ),
        (65534, 65534)
    );
}

/// As root, `UserNamespace::Always` without `host_ids` maps the sandbox user to nobody,
/// never to host root.
#[test]
fn user_namespace_always_as_root_maps_to_nobody_by_default() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("id -u; id -g; cat /proc/self/uid_map; cat /proc/self/status | grep CapEff");
    spec.user_namespace = UserNamespace::Always;
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "1000",
            "100",
            "1000",
            "65534",
            "1",
            "CapEff:",
            "0000000000000000"
        ],
        "{out}"
    );
}

#[test]
fn missing_required_bind_source_is_an_error() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let missing = PathBuf::from("/nonexistent/arca-sandbox-test/source");
    let err = run_err(&sh("true").mount(Mount::bind_ro(&missing, "/x")));
    assert!(
        matches!(&err, SandboxError::MissingSource { path } if *path == missing),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("/nonexistent/arca-sandbox-test/source"),
        "{err}"
    );
}

#[test]
fn missing_optional_bind_is_skipped() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let present = common::tempdir();
    std::fs::write(present.path().join("here"), "present\n").unwrap();
    let spec = sh("test -e /opt/missing || echo absent; cat /opt/present/here")
        .mount(Mount::Bind {
            source: "/nonexistent/arca-sandbox-test/source".into(),
            target: "/opt/missing".into(),
            writable: false,
            optional: true,
        })
        .mount(Mount::Bind {
            source: present.path().into(),
            target: "/opt/present".into(),
            writable: false,
            optional: true,
        });
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "absent\npresent\n");
}

#[test]
fn relative_or_dotted_targets_are_invalid() {
    if !require_root() || busybox().is_none() {
        return;
    }
    for target in ["build", "/build/../etc", "/build/.", "../build"] {
        let err = run_err(&sh("true").mount(Mount::Tmpfs {
            target: target.into(),
            mode: 0o755,
            size: None,
        }));
        assert!(
            matches!(&err, SandboxError::InvalidSpec { field: "mount target", value, .. } if value == target),
            "{target}: {err:?}"
        );
    }
    let err = run_err(&sh("true").mount(Mount::bind_ro("relative/source", "/x")));
    assert!(
        matches!(
            &err,
            SandboxError::InvalidSpec {
                field: "bind source",
                ..
            }
        ),
        "{err:?}"
    );
    let err = run_err(&sh("true").cwd("build"));
    assert!(
        matches!(&err, SandboxError::InvalidSpec { field: "cwd", .. }),
        "{err:?}"
    );
}

/// The spec promises normalised targets; a `.` in the middle of one is not normal.
#[test]
fn inner_dot_component_in_target_is_invalid() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let result = arca_sandbox::run(
        &sh("true").mount(Mount::Tmpfs {
            target: "/build/./x".into(),
            mode: 0o755,
            size: None,
        }),
        &mut Vec::new(),
    );
    assert!(
        matches!(
            &result,
            Err(SandboxError::InvalidSpec {
                field: "mount target",
                ..
            })
        ),
        "{result:?}"
    );
}

#[test]
fn missing_program_is_an_exec_error() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let mut spec = sh("");
    spec.program = "/bin/no-such-program".into();
    let err = run_err(&spec);
    match &err {
        SandboxError::Setup {
            step: SetupStep::Exec(program),
            errno,
        } => {
            assert_eq!(program, Path::new("/bin/no-such-program"));
            assert_eq!(*errno as i32, 2, "ENOENT expected: {err}");
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("executing '/bin/no-such-program'"),
        "{err}"
    );
}

#[test]
fn missing_working_directory_is_a_chdir_error() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let err = run_err(&sh("true").cwd("/no/such/dir"));
    match &err {
        SandboxError::Setup {
            step: SetupStep::Chdir(dir),
            errno,
        } => {
            assert_eq!(dir, Path::new("/no/such/dir"));
            assert_eq!(*errno as i32, 2, "ENOENT expected: {err}");
        }
        other => panic!("expected a chdir error, got {other:?}"),
    }
}

#[test]
fn files_dirs_and_symlinks_are_laid_out() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let spec = sh("cat /etc/motd /etc/secret; stat -c '%a %U' /etc/motd /etc/secret /var/empty; readlink /usr/local/bin; cat /usr/local/bin/motd")
        .mount(Mount::File { target: "/etc/motd".into(), contents: b"hello\n".to_vec(), mode: 0o644 })
        .mount(Mount::File { target: "/etc/secret".into(), contents: b"secret\n".to_vec(), mode: 0o600 })
        .mount(Mount::Dir { target: "/var/empty".into(), mode: 0o711 })
        .mount(Mount::Symlink { link: "/usr/local/bin".into(), target: "/etc".into() });
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(0), "{out}");
    // Made by root before the switch to the sandbox user: mode 0600 keeps uid 1000 out.
    assert_eq!(
        out,
        "hello\ncat: can't open '/etc/secret': Permission denied\n644 root\n600 root\n711 root\n/etc\nhello\n"
    );
}

/// A process whose host uid is 0 passes the owner checks of binds and of `/proc/sys`
/// files even without capabilities, so the sandbox user never maps to host root: by
/// default root's sandbox user is nobody (a root-only file in a bound directory stays
/// unreadable), and asking for host root is refused.
#[test]
fn user_namespace_never_maps_the_sandbox_user_to_host_root() {
    if !require_root() || busybox().is_none() {
        return;
    }
    let dir = common::tempdir();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let secret = dir.path().join("root-only");
    std::fs::write(&secret, "root secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let mut spec = sh("cat /bound/root-only").mount(Mount::bind_ro(dir.path(), "/bound"));
    spec.user_namespace = UserNamespace::Always;
    let (report, out) = run_ok(&spec);
    assert_eq!(report.outcome, Outcome::Exited(1), "{out}");
    assert_eq!(
        out,
        "cat: can't open '/bound/root-only': Permission denied\n"
    );

    spec.host_ids = Some((0, 0));
    let err = run_err(&spec);
    assert!(
        matches!(
            &err,
            SandboxError::InvalidSpec {
                field: "host_ids",
                ..
            }
        ),
        "{err:?}"
    );
}
