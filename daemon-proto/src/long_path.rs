//! Unix socket paths longer than `sun_path` (108 bytes on Linux), which Nix binds and
//! connects to: the socket's directory is opened and named through
//! `/proc/self/fd/N/NAME`, which is short whatever the directory's path.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// Longest path `bind` and `connect` take directly (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Calls `operation` with `path`, or, when `path` is too long for a socket address, with
/// the same file named through an open descriptor of its directory.
pub fn at_short_path<T>(
    path: &Path,
    operation: impl FnOnce(&Path) -> io::Result<T>,
) -> io::Result<T> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return operation(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return operation(path);
    };
    let dir = File::options()
        .read(true)
        .custom_flags((OFlag::O_PATH | OFlag::O_DIRECTORY).bits())
        .open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    if short.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket name '{}' is too long", name.to_string_lossy()),
        ));
    }
    let result = operation(&short);
    drop(dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socket_path_longer_than_sun_path_is_bound_and_reached() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let socket = deep.join("socket");
        assert!(socket.as_os_str().len() > 120);
        assert!(
            UnixListener::bind(&socket).is_err(),
            "std alone cannot bind it"
        );
        let listener = at_short_path(&socket, |p| UnixListener::bind(p)).unwrap();
        assert!(socket.exists(), "the socket is at its long path");
        let _client = at_short_path(&socket, |p| UnixStream::connect(p)).unwrap();
        let (_served, _) = listener.accept().unwrap();
    }
}
