//! Finding garbage collector roots, every kind Nix has:
//!
//! - **`<state>/gcroots` and `<state>/profiles`**, walked without recursion limits:
//!   a symlink into the store is a root (followed once); a symlink to a symlink outside
//!   the store is an *indirect* root (how `result` links register, through
//!   `gcroots/auto`), and a dangling one under `gcroots/auto` is removed; a regular file
//!   named like a store path's base name is a root without any link to read (cheap
//!   roots for build farms with hundreds of thousands of them). Per-user roots and
//!   profiles live in subdirectories of these.
//! - **Runtime roots**: what running processes use, from `/proc/<pid>/{exe,cwd,root}`,
//!   the links in `/proc/<pid>/fd`, the files mapped in `/proc/<pid>/maps` and store
//!   paths mentioned in `/proc/<pid>/environ`, plus the kernel's helper programs. Both
//!   the logical store dir and the physical one (for a store under another root) count.
//! - **Temporary roots** of live processes (see `temp_roots.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use arca_store_core::{base32, StoreDir, StorePath};

use crate::error::{IoContext, StoreError};

/// Where a root comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GcRootKind {
    /// A symlink in `gcroots` or `profiles` pointing into the store.
    Link,
    /// A symlink elsewhere, registered by a symlink to it in `gcroots` (e.g. `result`).
    Indirect,
    /// A regular file in `gcroots` named after a store path.
    File,
    /// A running process uses the path.
    Runtime,
    /// A live process holds it as a temporary root.
    Temporary,
}

/// One root: the link (or file, `/proc` entry, `{temp:<pid>}`) that keeps `path` alive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GcRoot {
    /// What holds the root, printed as Nix prints it in `--print-roots`.
    pub link: String,
    /// The store path it keeps alive (with its closure).
    pub path: StorePath,
    /// The kind of root.
    pub kind: GcRootKind,
}

/// Reads the roots in the `gcroots` and `profiles` trees under `state_dir`. Roots are
/// not checked for validity here. `remove_stale` deletes dangling links in
/// `gcroots/auto` on the way, as Nix does.
pub(crate) fn find_link_roots(
    state_dir: &Path,
    store: &StoreLocation,
    remove_stale: bool,
    roots: &mut Vec<GcRoot>,
) -> Result<(), StoreError> {
    let auto = state_dir.join("gcroots/auto");
    let mut pending: Vec<PathBuf> = vec![state_dir.join("gcroots"), state_dir.join("profiles")];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Vanished or unreadable (another user's per-user dir): Nix skips it too.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                continue
            }
            Err(error) => return Err(error).at(&dir),
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            // The directory entry's type costs no stat: 100,000 file roots are 100,000
            // names read, nothing more.
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(_) => continue,
            };
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_symlink() {
                let Ok(target) = fs::read_link(&path) else {
                    continue;
                };
                if let Some(root) = store.store_path_of(&target) {
                    roots.push(GcRoot {
                        link: path.to_string_lossy().into_owned(),
                        path: root,
                        kind: GcRootKind::Link,
                    });
                    continue;
                }
                let target = dir.join(&target); // absolute targets replace `dir`
                match fs::symlink_metadata(&target) {
                    Err(_) => {
                        if remove_stale && path.starts_with(&auto) {
                            tracing::info!(
                                "removing stale link from '{}' to '{}'",
                                path.display(),
                                target.display()
                            );
                            let _ = fs::remove_file(&path);
                        }
                    }
                    Ok(metadata) if metadata.file_type().is_symlink() => {
                        let Ok(final_target) = fs::read_link(&target) else {
                            continue;
                        };
                        if let Some(root) = store.store_path_of(&final_target) {
                            roots.push(GcRoot {
                                link: target.to_string_lossy().into_owned(),
                                path: root,
                                kind: GcRootKind::Indirect,
                            });
                        }
                    }
                    Ok(_) => {}
                }
            } else if file_type.is_file() {
                if let Some(root) = entry.file_name().to_str().and_then(parse_base_name) {
                    roots.push(GcRoot {
                        link: path.to_string_lossy().into_owned(),
                        path: root,
                        kind: GcRootKind::File,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Store paths that running processes use, read from `/proc` (entries that cannot be
/// read, such as other users' processes when not root, are skipped).
pub(crate) fn find_runtime_roots(store: &StoreLocation, roots: &mut Vec<GcRoot>) {
    let Ok(processes) = fs::read_dir("/proc") else {
        return;
    };
    let mut found: BTreeMap<(String, StorePath), ()> = BTreeMap::new();
    let mut add = |link: String, path: StorePath| {
        found.insert((link, path), ());
    };
    for process in processes.flatten() {
        let name = process.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let proc_dir = process.path();
        let pid = name.to_string_lossy();
        for link in ["exe", "cwd", "root"] {
            if let Ok(target) = fs::read_link(proc_dir.join(link)) {
                if let Some(root) = store.store_path_of(&target) {
                    add(format!("/proc/{pid}/{link}"), root);
                }
            }
        }
        if let Ok(fds) = fs::read_dir(proc_dir.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path()) {
                    if let Some(root) = store.store_path_of(&target) {
                        add(
                            format!("/proc/{pid}/fd/{}", fd.file_name().to_string_lossy()),
                            root,
                        );
                    }
                }
            }
        }
        for file in ["maps", "environ"] {
            if let Ok(contents) = fs::read(proc_dir.join(file)) {
                for root in store.scan(&contents) {
                    add(format!("/proc/{pid}/{file}"), root);
                }
            }
        }
    }
    for file in [
        "/proc/sys/kernel/modprobe",
        "/proc/sys/kernel/fbsplash",
        "/proc/sys/kernel/poweroff_cmd",
    ] {
        if let Ok(contents) = fs::read(file) {
            for root in store.scan(&contents) {
                add(file.to_owned(), root);
            }
        }
    }
    roots.extend(found.into_keys().map(|(link, path)| GcRoot {
        link,
        path,
        kind: GcRootKind::Runtime,
    }));
}

/// The store's directory as processes may name it: logically (`/nix/store`) and, for a
/// store under another root, physically (`ROOT/nix/store`).
#[derive(Debug, Clone)]
pub(crate) struct StoreLocation {
    prefixes: Vec<Vec<u8>>,
}

impl StoreLocation {
    pub(crate) fn new(store_dir: &StoreDir, physical: &Path) -> StoreLocation {
        let mut prefixes = vec![format!("{}/", store_dir.as_str()).into_bytes()];
        let mut physical = physical.as_os_str().as_bytes().to_vec();
        physical.push(b'/');
        if physical != prefixes[0] {
            prefixes.push(physical);
        }
        StoreLocation { prefixes }
    }

    /// The store path `target` is in or below, if it is in the store.
    pub(crate) fn store_path_of(&self, target: &Path) -> Option<StorePath> {
        let bytes = target.as_os_str().as_bytes();
        self.prefixes.iter().find_map(|prefix| {
            let rest = bytes.strip_prefix(prefix.as_slice())?;
            let base = rest.split(|&b| b == b'/').next()?;
            parse_base_name(std::str::from_utf8(base).ok()?)
        })
    }

    /// Every store path mentioned in `bytes` (Nix's runtime-root pattern: the store
    /// dir, a slash, 32 base-32 characters and the name characters after them).
    pub(crate) fn scan(&self, bytes: &[u8]) -> Vec<StorePath> {
        let mut found = Vec::new();
        for prefix in &self.prefixes {
            for start in memchr::memmem::find_iter(bytes, prefix) {
                let rest = &bytes[start + prefix.len()..];
                let end = rest
                    .iter()
                    .position(|&b| !is_name_byte(b))
                    .unwrap_or(rest.len());
                if let Some(path) = std::str::from_utf8(&rest[..end])
                    .ok()
                    .and_then(parse_base_name)
                {
                    found.push(path);
                }
            }
        }
        found
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)
}

/// A store path base name (`<32 base-32 chars>-<name>`), if `name` is one.
pub(crate) fn parse_base_name(name: &str) -> Option<StorePath> {
    let hash = name.get(..32)?;
    if !hash.bytes().all(base32::is_base32_char) {
        return None;
    }
    StorePath::from_base_name(name).ok()
}
