//! Canonical metadata for store paths, as Nix gives them: mtime 1 (second 1 of the
//! epoch, so that tools comparing times with 0 do not mistake the file for missing),
//! permissions 0444 or 0555 (directories 0555), no setuid/setgid/sticky bits, and the
//! store's owner.
//!
//! The walk is iterative, so deep trees cannot overflow the stack, and never follows a
//! symlink: every call acts on the link itself.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::{IoContext, StoreError};

/// Who owns store files: `Some(uid, gid)` to change ownership (when running as root),
/// `None` to keep the adding user's.
pub type Owner = Option<(u32, u32)>;

/// How the store restores NARs: files get canonical metadata as they are written, which
/// leaves [`canonicalise`] only directories and symlinks to change.
pub fn store_restore_options() -> arca_nar::RestoreOptions {
    arca_nar::RestoreOptions {
        canonical_metadata: true,
        ..Default::default()
    }
}

/// Makes every entry under `root` (inclusive) canonical.
pub fn canonicalise(root: &Path, owner: Owner) -> Result<(), StoreError> {
    // Directories are finished after their children (post-order), so that fixing a
    // child never happens inside an already read-only directory.
    let mut pending: Vec<(PathBuf, bool)> = vec![(root.to_owned(), false)];
    while let Some((path, children_done)) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).at(&path)?;
        if metadata.is_dir() && !children_done {
            pending.push((path.clone(), true));
            for entry in fs::read_dir(&path).at(&path)? {
                pending.push((entry.at(&path)?.path(), false));
            }
            continue;
        }
        canonicalise_entry(&path, &metadata, owner)?;
    }
    Ok(())
}

fn canonicalise_entry(
    path: &Path,
    metadata: &fs::Metadata,
    owner: Owner,
) -> Result<(), StoreError> {
    if let Some((uid, gid)) = owner {
        if metadata.uid() != uid || metadata.gid() != gid {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at(path)?;
        }
    }
    if !metadata.file_type().is_symlink() {
        let executable = metadata.is_dir() || metadata.mode() & 0o111 != 0;
        let mode = if executable { 0o555 } else { 0o444 };
        if metadata.mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)?;
        }
    }
    if metadata.mtime() != 1 || metadata.mtime_nsec() != 0 {
        let one = TimeSpec::new(1, 0);
        utimensat(None, path, &one, &one, UtimensatFlags::NoFollowSymlink)
            .map_err(std::io::Error::from)
            .at(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn canonical_modes_and_times_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/f"), "x").unwrap();
        fs::write(root.join("exe"), "x").unwrap();
        fs::set_permissions(root.join("exe"), fs::Permissions::from_mode(0o4751)).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "y").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
        symlink(&outside, root.join("link")).unwrap();

        canonicalise(&root, None).unwrap();

        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&root), 0o555);
        assert_eq!(mode(&root.join("sub")), 0o555);
        assert_eq!(mode(&root.join("sub/f")), 0o444);
        assert_eq!(mode(&root.join("exe")), 0o555, "setuid bit dropped");
        assert_eq!(mode(&outside), 0o600, "symlink target untouched");
        for p in [&root, &root.join("sub/f"), &root.join("link")] {
            assert_eq!(
                fs::symlink_metadata(p).unwrap().mtime(),
                1,
                "{}",
                p.display()
            );
        }
        assert_ne!(fs::metadata(&outside).unwrap().mtime(), 1);
        // Let tempdir clean up.
        for p in [&root, &root.join("sub")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}
