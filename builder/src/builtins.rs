//! Nix's builtin builders that Arca runs itself, in the building process rather than in
//! the sandbox: `builtin:buildenv`, the user environment (`nix-env` profiles) of Nix
//! 2.8's `buildenv.cc`, symlink for symlink; and `builtin:fetchurl` (`crate::fetchurl`,
//! which reads only what every user may).
//!
//! `builtin:buildenv` reads only the derivation's input closure: every path it reads is
//! resolved symlink by symlink in the store's logical namespace ([`StoreView`]), and
//! one that leads outside the input closure (a symlink to `/etc`, a package path that is
//! no input) is never read: it is linked to, like any file, or skipped with Nix's
//! warning where Nix would read it. So running it with the daemon's privileges shows a
//! builder nothing a sandboxed one could not see.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use arca_store_core::{StoreDir, StorePath};

/// The input closure of a build, seen at its logical paths.
pub(crate) struct StoreView<'a> {
    pub store_dir: &'a StoreDir,
    /// Where the files of a store path are.
    pub physical: &'a dyn Fn(&StorePath) -> PathBuf,
    /// The paths that may be read.
    pub inputs: &'a BTreeSet<StorePath>,
}

/// Most symlinks followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: usize = 40;

impl StoreView<'_> {
    /// Where the file at the canonical logical path `path` is, if it is inside an input.
    fn physical_of(&self, path: &Path) -> Option<PathBuf> {
        let rest = path.strip_prefix(self.store_dir.as_str()).ok()?;
        let mut components = rest.components();
        let base = components.next()?.as_os_str().to_str()?;
        let store_path = StorePath::from_base_name(base).ok()?;
        if !self.inputs.contains(&store_path) {
            return None;
        }
        Some((self.physical)(&store_path).join(components.as_path()))
    }

    /// Whether `path` is the store dir or one of its ancestors (never read: they are
    /// directories on the way to the inputs).
    fn is_store_ancestor(&self, path: &Path) -> bool {
        Path::new(self.store_dir.as_str()).starts_with(path)
    }

    /// `path` with every symlink followed, as a canonical logical path, if it exists and
    /// stays inside the inputs all the way.
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut pending: Vec<PathBuf> = vec![path.to_path_buf()];
        let mut resolved = PathBuf::from("/");
        let mut followed = 0;
        while let Some(next) = pending.pop() {
            let mut components: Vec<Component> = next.components().collect();
            components.reverse();
            while let Some(component) = components.pop() {
                match component {
                    Component::RootDir => resolved = PathBuf::from("/"),
                    Component::CurDir | Component::Prefix(_) => {}
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(name) => {
                        let candidate = resolved.join(name);
                        if self.is_store_ancestor(&candidate) {
                            resolved = candidate;
                            continue;
                        }
                        let physical = self.physical_of(&candidate)?;
                        let metadata = fs::symlink_metadata(&physical).ok()?;
                        if metadata.file_type().is_symlink() {
                            followed += 1;
                            if followed > MAX_SYMLINKS {
                                return None;
                            }
                            let target = fs::read_link(&physical).ok()?;
                            // The rest of this path, after the link's target.
                            let rest: PathBuf = components.iter().rev().collect();
                            components.clear();
                            pending.push(rest);
                            pending.push(target);
                        } else {
                            resolved = candidate;
                        }
                    }
                }
            }
        }
        Some(resolved)
    }

    /// `stat` (following symlinks) of a logical path inside the inputs.
    fn metadata(&self, path: &Path) -> Option<fs::Metadata> {
        let resolved = self.resolve(path)?;
        fs::metadata(self.physical_of(&resolved)?).ok()
    }

    /// The entries of a directory inside the inputs, sorted; `None` if it is not one (or
    /// not inside the inputs).
    fn read_dir(&self, path: &Path) -> Option<Vec<String>> {
        let physical = self.physical_of(&self.resolve(path)?)?;
        let mut names: Vec<String> = fs::read_dir(physical)
            .ok()?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Some(names)
    }

    fn read_to_string(&self, path: &Path) -> Option<String> {
        let physical = self.physical_of(&self.resolve(path)?)?;
        fs::read_to_string(physical).ok()
    }
}

/// `builtin:buildenv`: the user environment `out` (made at `out_dir`) of the packages in
/// `env["derivations"]` (groups of `ACTIVE PRIORITY COUNT PATH...`), with a
/// `manifest.nix` link to `env["manifest"]`. Warnings go to `log`; an error is the
/// message Nix gives.
pub(crate) fn buildenv(
    env: &BTreeMap<String, String>,
    out_dir: &Path,
    view: &StoreView<'_>,
    log: &mut dyn Write,
) -> Result<(), String> {
    let attr = |name: &str| {
        env.get(name)
            .ok_or_else(|| format!("attribute '{name}' missing"))
    };
    let out = PathBuf::from(attr("out")?);
    fs::create_dir_all(out_dir).map_err(|e| format!("creating '{}': {e}", out.display()))?;
    let mut packages = Vec::new();
    let mut words = attr("derivations")?.split_ascii_whitespace();
    while let Some(active) = words.next() {
        let mut number = |what: &str| -> Result<i64, String> {
            words
                .next()
                .and_then(|word| word.parse().ok())
                .ok_or_else(|| format!("attribute 'derivations' has a bad {what}"))
        };
        let priority = number("priority")?;
        let count = number("output count")?;
        for _ in 0..count {
            let path = words
                .next()
                .ok_or("attribute 'derivations' ends in the middle of a package")?;
            packages.push((priority, PathBuf::from(path), active != "false"));
        }
    }
    let mut profile = Profile {
        view,
        out,
        out_dir: out_dir.to_path_buf(),
        priorities: BTreeMap::new(),
        log,
    };
    profile.build(packages)?;
    let manifest = attr("manifest")?;
    std::os::unix::fs::symlink(manifest, out_dir.join("manifest.nix"))
        .map_err(|e| format!("creating the manifest link: {e}"))
}

/// Files of a package that never go into a user environment (Nix's list).
const SKIPPED_SUFFIXES: &[&str] = &[
    "/propagated-build-inputs",
    "/nix-support",
    "/perllocal.pod",
    "/info/dir",
    "/log",
    "/manifest.nix",
    "/manifest.json",
];

struct Profile<'v, 'l> {
    view: &'v StoreView<'v>,
    /// The output's logical path.
    out: PathBuf,
    /// Where it is being made.
    out_dir: PathBuf,
    /// The priority of each link made, by its path relative to the output.
    priorities: BTreeMap<PathBuf, i64>,
    log: &'l mut dyn Write,
}

impl Profile<'_, '_> {
    fn warn(&mut self, message: String) {
        let _ = writeln!(self.log, "warning: {message}");
    }

    fn build(&mut self, mut packages: Vec<(i64, PathBuf, bool)>) -> Result<(), String> {
        let mut done = BTreeSet::new();
        let mut postponed = BTreeSet::new();
        packages.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (priority, path, active) in packages {
            if active {
                self.add_package(&path, priority, &mut done, &mut postponed)?;
            }
        }
        // Packages propagated by the installed ones come later, at lower priorities.
        let mut priority = 1000;
        while !postponed.is_empty() {
            for path in std::mem::take(&mut postponed) {
                self.add_package(&path, priority, &mut done, &mut postponed)?;
                priority += 1;
            }
        }
        Ok(())
    }

    fn add_package(
        &mut self,
        path: &Path,
        priority: i64,
        done: &mut BTreeSet<PathBuf>,
        postponed: &mut BTreeSet<PathBuf>,
    ) -> Result<(), String> {
        if !done.insert(path.to_path_buf()) {
            return Ok(());
        }
        self.link_tree(path, Path::new(""), priority)?;
        let propagated = path.join("nix-support/propagated-user-env-packages");
        if let Some(text) = self.view.read_to_string(&propagated) {
            for package in text.split([' ', '\n']).filter(|p| !p.is_empty()) {
                let package = PathBuf::from(package);
                if !done.contains(&package) {
                    postponed.insert(package);
                }
            }
        }
        Ok(())
    }

    /// Nix's `createLinks`: links the entries of `source` into `target` (relative to the
    /// output), descending where two packages share a directory.
    fn link_tree(&mut self, source: &Path, target: &Path, priority: i64) -> Result<(), String> {
        let Some(names) = self.view.read_dir(source) else {
            self.warn(format!(
                "not including '{}' in the user environment because it's not a directory",
                source.display()
            ));
            return Ok(());
        };
        for name in names.iter().filter(|name| !name.starts_with('.')) {
            let source_file = source.join(name);
            let target_file = target.join(name);
            let display = self.out.join(&target_file);
            let Some(metadata) = self.view.metadata(&source_file) else {
                self.warn(format!("skipping dangling symlink '{}'", display.display()));
                continue;
            };
            let source_text = source_file.to_string_lossy();
            if SKIPPED_SUFFIXES.iter().any(|s| source_text.ends_with(s)) {
                continue;
            }
            let physical = self.out_dir.join(&target_file);
            let existing = fs::symlink_metadata(&physical).ok();
            if metadata.is_dir() {
                match existing {
                    Some(existing) if existing.is_dir() => {
                        self.link_tree(&source_file, &target_file, priority)?;
                        continue;
                    }
                    Some(existing) if existing.file_type().is_symlink() => {
                        let link = fs::read_link(&physical).map_err(|e| e.to_string())?;
                        let linked = self.view.resolve(&link).filter(|linked| {
                            self.view.metadata(linked).is_some_and(|m| m.is_dir())
                        });
                        let Some(linked) = linked else {
                            return Err(format!(
                                "collision between '{}' and non-directory '{}'",
                                source_file.display(),
                                link.display()
                            ));
                        };
                        fs::remove_file(&physical).map_err(|e| e.to_string())?;
                        fs::create_dir(&physical).map_err(|e| e.to_string())?;
                        let previous = *self.priorities.entry(target_file.clone()).or_insert(0);
                        self.link_tree(&linked, &target_file, previous)?;
                        self.link_tree(&source_file, &target_file, priority)?;
                        continue;
                    }
                    _ => {}
                }
            } else if let Some(existing) = existing {
                if existing.file_type().is_symlink() {
                    let previous = *self.priorities.entry(target_file.clone()).or_insert(0);
                    if previous == priority {
                        let other = fs::read_link(&physical).unwrap_or_default();
                        return Err(format!(
                            "packages '{}' and '{}' have the same priority {priority}; use 'nix-env --set-flag priority NUMBER INSTALLED_PKGNAME' to change the priority of one of the conflicting packages (0 being the highest priority)",
                            source_file.display(),
                            other.display()
                        ));
                    }
                    if previous < priority {
                        continue;
                    }
                    fs::remove_file(&physical).map_err(|e| e.to_string())?;
                } else if existing.is_dir() {
                    return Err(format!(
                        "collision between non-directory '{}' and directory '{}'",
                        source_file.display(),
                        display.display()
                    ));
                }
            }
            std::os::unix::fs::symlink(&source_file, &physical)
                .map_err(|e| format!("creating symlink '{}': {e}", display.display()))?;
            self.priorities.insert(target_file, priority);
        }
        Ok(())
    }
}

/// Runs the builtin builder `name` (`buildenv`), its messages written to `log`.
pub(crate) fn run(
    name: &str,
    env: &BTreeMap<String, String>,
    out_dir: &Path,
    view: &StoreView<'_>,
    log: &mut dyn Write,
) -> io::Result<bool> {
    let result = match name {
        "buildenv" => buildenv(env, out_dir, view, log),
        "fetchurl" => crate::fetchurl::fetchurl(env, out_dir),
        other => Err(format!("unsupported builtin builder '{other}'")),
    };
    match result {
        Ok(()) => Ok(true),
        Err(message) => {
            writeln!(log, "{message}")?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake store: store paths' files under a temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
        store_dir: StoreDir,
        inputs: BTreeSet<StorePath>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                store_dir: StoreDir::default(),
                inputs: BTreeSet::new(),
            }
        }

        /// A package `name` (an input) with `files` (path, contents) and `links`.
        fn package(
            &mut self,
            hash: char,
            name: &str,
            files: &[&str],
            links: &[(&str, &str)],
        ) -> String {
            let path =
                StorePath::from_base_name(&format!("{}-{name}", hash.to_string().repeat(32)))
                    .unwrap();
            let root = self.dir.path().join(path.as_str());
            fs::create_dir_all(&root).unwrap();
            for file in files {
                let file = root.join(file);
                fs::create_dir_all(file.parent().unwrap()).unwrap();
                fs::write(file, "x").unwrap();
            }
            for (link, target) in links {
                let link = root.join(link);
                fs::create_dir_all(link.parent().unwrap()).unwrap();
                symlink(target, link).unwrap();
            }
            self.inputs.insert(path.clone());
            self.store_dir.display(&path)
        }

        fn buildenv(&self, derivations: &str) -> (Result<(), String>, PathBuf, String) {
            let physical = |p: &StorePath| self.dir.path().join(p.as_str());
            let view = StoreView {
                store_dir: &self.store_dir,
                physical: &physical,
                inputs: &self.inputs,
            };
            let out = self.dir.path().join("out");
            let env: BTreeMap<String, String> = [
                (
                    "out",
                    "/nix/store/00000000000000000000000000000000-user-environment",
                ),
                ("derivations", derivations),
                (
                    "manifest",
                    "/nix/store/11111111111111111111111111111111-env-manifest.nix",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let mut log = Vec::new();
            let result = buildenv(&env, &out, &view, &mut log);
            (result, out, String::from_utf8(log).unwrap())
        }
    }

    fn link(path: &Path) -> String {
        fs::read_link(path).unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn packages_are_merged_and_shared_directories_split_as_nix_does() {
        let mut f = Fixture::new();
        let a = f.package('a', "a", &["bin/a", "share/doc/a"], &[]);
        let b = f.package('b', "b", &["bin/b", "nix-support/setup-hook"], &[]);
        let (result, out, log) = f.buildenv(&format!("true 5 1 {a} true 5 1 {b}"));
        result.unwrap();
        assert_eq!(log, "");
        // `bin` is in both: a directory of links; `share` only in `a`: one link.
        assert!(fs::symlink_metadata(out.join("bin")).unwrap().is_dir());
        assert_eq!(link(&out.join("bin/a")), format!("{a}/bin/a"));
        assert_eq!(link(&out.join("bin/b")), format!("{b}/bin/b"));
        assert_eq!(link(&out.join("share")), format!("{a}/share"));
        assert!(
            !out.join("nix-support").exists(),
            "nix-support is never linked"
        );
        assert_eq!(
            link(&out.join("manifest.nix")),
            "/nix/store/11111111111111111111111111111111-env-manifest.nix"
        );
    }

    #[test]
    fn priorities_decide_collisions_and_equal_ones_fail() {
        let mut f = Fixture::new();
        let a = f.package('a', "a", &["bin/tool"], &[]);
        let b = f.package('b', "b", &["bin/tool"], &[]);
        let (result, out, _) = f.buildenv(&format!("true 6 1 {a} true 4 1 {b}"));
        result.unwrap();
        assert_eq!(link(&out.join("bin/tool")), format!("{b}/bin/tool"));

        let mut f = Fixture::new();
        let a = f.package('a', "a", &["bin/tool"], &[]);
        let b = f.package('b', "b", &["bin/tool"], &[]);
        let (result, _, _) = f.buildenv(&format!("true 5 1 {a} true 5 1 {b}"));
        let error = result.unwrap_err();
        assert!(error.contains("have the same priority 5"), "{error}");
    }

    #[test]
    fn inactive_packages_are_left_out_and_propagated_ones_come_later() {
        let mut f = Fixture::new();
        let dep = f.package('c', "dep", &["bin/dep"], &[]);
        let a = f.package(
            'a',
            "a",
            &["bin/a", "nix-support/propagated-user-env-packages"],
            &[],
        );
        let propagated = f
            .dir
            .path()
            .join(a.trim_start_matches("/nix/store/"))
            .join("nix-support/propagated-user-env-packages");
        fs::write(propagated, format!("{dep}\n")).unwrap();
        let off = f.package('d', "off", &["bin/off"], &[]);
        let (result, out, _) = f.buildenv(&format!("true 5 1 {a} false 5 1 {off}"));
        result.unwrap();
        assert_eq!(link(&out.join("bin/dep")), format!("{dep}/bin/dep"));
        assert!(fs::symlink_metadata(out.join("bin/off")).is_err());
    }

    #[test]
    fn nothing_outside_the_inputs_is_read() {
        let mut f = Fixture::new();
        // Two packages whose `etc` collide: one a symlink to the host's /etc. Listing it
        // would show the host's file names; it must be treated as a non-directory.
        let a = f.package('a', "a", &["etc/a.conf"], &[]);
        let b = f.package('b', "b", &[], &[("etc", "/etc")]);
        let (result, out, _) = f.buildenv(&format!("true 5 1 {a} true 6 1 {b}"));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(link(&out.join("etc")), format!("{a}/etc"));
        assert!(fs::symlink_metadata(out.join("etc/passwd")).is_err());

        // A package path that is no input is not read either.
        let mut f = Fixture::new();
        let (result, out, log) = f.buildenv("true 5 1 /etc");
        assert!(result.is_ok());
        assert!(
            log.contains("not including '/etc' in the user environment"),
            "{log}"
        );
        assert!(fs::symlink_metadata(out.join("passwd")).is_err());
        f.inputs.clear();
    }

    #[test]
    fn symlinks_between_inputs_are_followed_and_dangling_ones_skipped() {
        let mut f = Fixture::new();
        let real = f.package('c', "real", &["share/x/file"], &[]);
        let a = f.package(
            'a',
            "a",
            &["share/a"],
            &[
                ("share/x", &format!("{real}/share/x")),
                ("bin/gone", "/nix/store/nothing"),
            ],
        );
        // `bin` in both, so that `a`'s `bin` is read (and its dangling link found).
        let b = f.package('b', "b", &["share/x/other", "bin/b"], &[]);
        let (result, out, log) = f.buildenv(&format!("true 5 1 {a} true 6 1 {b}"));
        result.unwrap();
        // `share/x` of `a` is a link to another input's directory: split, with both.
        assert_eq!(
            link(&out.join("share/x/file")),
            format!("{real}/share/x/file")
        );
        assert_eq!(
            link(&out.join("share/x/other")),
            format!("{b}/share/x/other")
        );
        assert!(log.contains("skipping dangling symlink"), "{log}");
    }
}
