//! `builtin:fetchurl` (Nix's `builtinFetchurl`, what `import <nix/fetchurl.nix>` builds):
//! the output is the file at `url`, or with `unpack = "1"` the tree of the NAR there; with
//! `executable = "1"` the file is made executable. Only fixed-output derivations may use
//! it (the job checks), so what is fetched is checked against the declared hash.
//!
//! It runs in the building process, not in a sandbox, so it reads nothing a build user
//! could not: a `file://` URL must name a file every user may read (world-readable, in
//! directories every user may search); `http://` and `https://` are fetched with the
//! `fetchurl` feature of this crate (certificates are verified, where Nix does not
//! bother: the hash is checked anyway, but a failed check costs a download).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Fetches `env["url"]` into `out` (which must not exist). An `Err` is the message the
/// build log gets.
pub(crate) fn fetchurl(env: &BTreeMap<String, String>, out: &Path) -> Result<(), String> {
    let url = env
        .get("url")
        .ok_or_else(|| "attribute 'url' missing".to_owned())?;
    let unpack = env.get("unpack").is_some_and(|v| v == "1");
    let executable = env.get("executable").is_some_and(|v| v == "1");
    if unpack && url.ends_with(".xz") {
        return Err(format!(
            "cannot unpack '{url}': xz-compressed archives are not supported yet"
        ));
    }
    let mut source = open(url)?;
    let failed = |error: io::Error| format!("fetching '{url}': {error}");
    if unpack {
        arca_nar::restore(&mut source, out, &arca_nar::RestoreOptions::default())
            .map_err(|error| format!("unpacking '{url}': {error}"))?;
    } else {
        let mut file = fs::File::create_new(out).map_err(failed)?;
        io::copy(&mut source, &mut file).map_err(failed)?;
        if executable {
            fs::set_permissions(out, fs::Permissions::from_mode(0o755)).map_err(failed)?;
        }
    }
    Ok(())
}

/// A reader of what `url` names.
fn open(url: &str) -> Result<Box<dyn Read>, String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = world_readable(Path::new(path))?;
        let file = fs::File::open(&path).map_err(|error| format!("reading '{url}': {error}"))?;
        return Ok(Box::new(file));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return http(url);
    }
    Err(format!(
        "unsupported URL '{url}' (file://, http:// and https:// are supported)"
    ))
}

#[cfg(feature = "fetchurl")]
fn http(url: &str) -> Result<Box<dyn Read>, String> {
    let response = ureq::get(url)
        .call()
        .map_err(|error| format!("unable to download '{url}': {error}"))?;
    Ok(Box::new(response.into_reader()))
}

#[cfg(not(feature = "fetchurl"))]
fn http(url: &str) -> Result<Box<dyn Read>, String> {
    Err(format!(
        "cannot download '{url}': arca-build was built without its 'fetchurl' feature"
    ))
}

/// `path` resolved, if every user may read it: a regular file readable by others, each
/// directory on the way searchable by others.
fn world_readable(path: &Path) -> Result<PathBuf, String> {
    let denied = |why: &str| {
        format!(
            "refusing to read '{}': {why} (builtin:fetchurl reads only what every user may)",
            path.display()
        )
    };
    let real = fs::canonicalize(path).map_err(|error| denied(&error.to_string()))?;
    let metadata = fs::metadata(&real).map_err(|error| denied(&error.to_string()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o004 == 0 {
        return Err(denied("not a regular file readable by all"));
    }
    for dir in real.ancestors().skip(1) {
        let mode = fs::metadata(dir)
            .map_err(|error| denied(&error.to_string()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(denied(&format!(
                "'{}' is not searchable by all",
                dir.display()
            )));
        }
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fetches_a_world_readable_file_and_makes_it_executable_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let source = dir.path().join("src");
        fs::write(&source, b"hello\n").unwrap();
        fs::set_permissions(&source, fs::Permissions::from_mode(0o644)).unwrap();
        let url = format!("file://{}", source.display());
        let out = dir.path().join("out");
        fetchurl(&env(&[("url", &url), ("executable", "1")]), &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"hello\n");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn refuses_files_not_every_user_may_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"x").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let out = dir.path().join("out");
        let error = fetchurl(
            &env(&[("url", &format!("file://{}", secret.display()))]),
            &out,
        )
        .unwrap_err();
        assert!(error.contains("refusing to read"), "{error}");
        assert!(!out.exists());
        // Readable, but in a directory others cannot search.
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        let inner = private.join("file");
        fs::write(&inner, b"x").unwrap();
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let error = fetchurl(
            &env(&[("url", &format!("file://{}", inner.display()))]),
            &out,
        )
        .unwrap_err();
        assert!(error.contains("not searchable"), "{error}");
        assert!(fetchurl(&env(&[("url", "ftp://x/y")]), &out)
            .unwrap_err()
            .contains("unsupported URL"));
        assert!(fetchurl(&env(&[]), &out)
            .unwrap_err()
            .contains("'url' missing"));
    }

    #[test]
    fn unpacks_a_nar() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("a"), b"A").unwrap();
        let nar = dir.path().join("tree.nar");
        let mut bytes = Vec::new();
        arca_nar::dump_path(&tree, &mut bytes, &arca_nar::DumpOptions::default()).unwrap();
        fs::write(&nar, &bytes).unwrap();
        fs::set_permissions(&nar, fs::Permissions::from_mode(0o644)).unwrap();
        let out = dir.path().join("out");
        let url = format!("file://{}", nar.display());
        fetchurl(&env(&[("url", &url), ("unpack", "1")]), &out).unwrap();
        assert_eq!(fs::read(out.join("a")).unwrap(), b"A");
    }
}
