//! Rewriting hash parts in a built tree (Nix's hash rewriting): an unsandboxed build of
//! an output that is valid already writes it under another path of the same length, and
//! what it built is made to refer to the real path before it is hashed.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replaces every `from` with its `to` (32 bytes each, store path hash parts) in the
/// regular files and symlink targets under `root` (itself included). Files are
/// rewritten through a temporary file beside them, only when something is replaced;
/// directories are made writable by their owner on the way (the tree is canonicalised
/// afterwards anyway).
pub(crate) fn rewrite_tree(root: &Path, rewrites: &[([u8; 32], [u8; 32])]) -> io::Result<()> {
    let metadata = fs::symlink_metadata(root)?;
    let kind = metadata.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(root)?;
        let mut bytes = target.as_os_str().as_encoded_bytes().to_vec();
        if replace_all(&mut bytes, rewrites) {
            fs::remove_file(root)?;
            let target = std::ffi::OsString::from_vec(bytes);
            std::os::unix::fs::symlink(target, root)?;
        }
    } else if kind.is_dir() {
        let mode = metadata.permissions().mode();
        if mode & 0o200 == 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(mode | 0o200))?;
        }
        for entry in fs::read_dir(root)? {
            rewrite_tree(&entry?.path(), rewrites)?;
        }
    } else if kind.is_file() {
        rewrite_file(root, metadata.permissions(), rewrites)?;
    }
    Ok(())
}

/// Same-length replacement in place; whether anything was replaced.
fn replace_all(bytes: &mut [u8], rewrites: &[([u8; 32], [u8; 32])]) -> bool {
    let mut replaced = false;
    for (from, to) in rewrites {
        let mut start = 0;
        while let Some(offset) = find(&bytes[start..], from) {
            let at = start + offset;
            bytes[at..at + 32].copy_from_slice(to);
            replaced = true;
            start = at + 32;
        }
    }
    replaced
}

fn find(haystack: &[u8], needle: &[u8; 32]) -> Option<usize> {
    haystack.windows(32).position(|window| window == needle)
}

/// Streams `path` through the replacement into a temporary file, renamed over it when
/// something was replaced. A needle cut by a chunk boundary is found: the last 31 bytes
/// of each chunk wait for the next.
fn rewrite_file(
    path: &Path,
    permissions: fs::Permissions,
    rewrites: &[([u8; 32], [u8; 32])],
) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let temporary = path.with_file_name(format!(
        ".{}.rewrite",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    let mut input = fs::File::open(path)?;
    let mut output = io::BufWriter::new(fs::File::create(&temporary)?);
    let mut carry: Vec<u8> = Vec::with_capacity(CHUNK + 32);
    let mut chunk = vec![0u8; CHUNK];
    let mut replaced = false;
    let result = (|| -> io::Result<()> {
        loop {
            let n = input.read(&mut chunk)?;
            carry.extend_from_slice(&chunk[..n]);
            replaced |= replace_all(&mut carry, rewrites);
            if n == 0 {
                output.write_all(&carry)?;
                break;
            }
            let keep = carry.len().min(31);
            let flush = carry.len() - keep;
            output.write_all(&carry[..flush])?;
            carry.drain(..flush);
        }
        output.flush()
    })();
    drop(output);
    if result.is_err() || !replaced {
        let _ = fs::remove_file(&temporary);
        return result;
    }
    fs::set_permissions(&temporary, permissions)?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: [u8; 32] = *b"0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const TO: [u8; 32] = *b"1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn files_and_links_are_rewritten_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        fs::create_dir_all(root.join("sub")).unwrap();
        // A needle straddling the 1 MiB chunk boundary, and one at the very end.
        let mut big = vec![b'x'; (1 << 20) - 10];
        big.extend_from_slice(&FROM);
        big.extend_from_slice(b"middle");
        big.extend_from_slice(&FROM);
        fs::write(root.join("sub/big"), &big).unwrap();
        fs::set_permissions(root.join("sub/big"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(root.join("plain"), "nothing here").unwrap();
        let target = format!("/nix/store/{}-dep/bin", std::str::from_utf8(&FROM).unwrap());
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();

        rewrite_tree(&root, &[(FROM, TO)]).unwrap();

        let rewritten = fs::read(root.join("sub/big")).unwrap();
        let mut expected = vec![b'x'; (1 << 20) - 10];
        expected.extend_from_slice(&TO);
        expected.extend_from_slice(b"middle");
        expected.extend_from_slice(&TO);
        assert_eq!(rewritten, expected);
        let mode = fs::metadata(root.join("sub/big"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555, "the file keeps its mode");
        assert_eq!(
            fs::read_to_string(root.join("plain")).unwrap(),
            "nothing here"
        );
        assert_eq!(
            fs::read_link(root.join("link")).unwrap().to_str().unwrap(),
            target.replace(
                std::str::from_utf8(&FROM).unwrap(),
                std::str::from_utf8(&TO).unwrap()
            )
        );
        let leftovers: Vec<_> = fs::read_dir(root.join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }
}
