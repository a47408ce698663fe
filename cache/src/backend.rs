//! Where a binary cache keeps its files: one trait, [`Backend`], and its implementations
//! for `file://` ([`FileBackend`]), `http(s)://` ([`crate::http::HttpBackend`]) and
//! `s3://` ([`crate::s3::S3Backend`]).
//!
//! A backend knows nothing of narinfos or NARs: it gets, tests and puts files under
//! keys relative to the cache (`nix-cache-info`, `HASH.narinfo`, `nar/FILEHASH.nar.xz`,
//! `log/DRV`). Every put is atomic: a reader sees the whole file or none of it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A failed backend operation: what was done, to which URL, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} '{url}'")]
pub struct BackendError {
    pub action: &'static str,
    pub url: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl BackendError {
    pub fn new(
        action: &'static str,
        url: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BackendError {
        BackendError {
            action,
            url: url.into(),
            source: source.into(),
        }
    }
}

/// What a put stores: a few bytes, or a file spooled by [`Backend::spool`].
pub enum Body<'a> {
    Bytes(&'a [u8]),
    File(NamedTempFile),
}

impl Body<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> io::Result<u64> {
        match self {
            Body::Bytes(bytes) => Ok(bytes.len() as u64),
            Body::File(file) => Ok(file.as_file().metadata()?.len()),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        self.len().map(|len| len == 0)
    }
}

/// A spooled file opened anew for reading from its start, and its length (what an
/// upload sends, `url` naming it in errors).
pub(crate) fn open_spooled(
    file: &NamedTempFile,
    url: &str,
) -> Result<(fs::File, u64), BackendError> {
    let failed = |error| BackendError::new("upload", url, error);
    let len = file.as_file().metadata().map_err(failed)?.len();
    Ok((file.reopen().map_err(failed)?, len))
}

/// A stream of a file's bytes from a backend.
pub type Download = Box<dyn Read + Send>;

/// The files of a binary cache.
pub trait Backend: Send + Sync {
    /// The URL of `key`, for messages.
    fn url_of(&self, key: &str) -> String;

    /// The file `key`, as a stream; `None` when the cache has no such file.
    fn get(&self, key: &str) -> Result<Option<Download>, BackendError>;

    /// Whether the cache has the file `key`.
    fn exists(&self, key: &str) -> Result<bool, BackendError>;

    /// Stores `body` as `key` (atomically), with the MIME type `content_type`.
    fn put(&self, key: &str, body: Body<'_>, content_type: &str) -> Result<(), BackendError>;

    /// A new temporary file to spool a large body into before [`Backend::put`] (where
    /// the backend can store it fastest: a `file://` cache's own directory).
    fn spool(&self) -> Result<NamedTempFile, BackendError> {
        NamedTempFile::new().map_err(|error| BackendError::new("create", "a temporary file", error))
    }

    /// Whether [`Backend::put`] works at all (an `http://` cache may be read-only).
    fn writable(&self) -> bool {
        true
    }

    /// The names of the files at the cache's top level (not below `nar/` or `log/`);
    /// `None` where the backend cannot list them (HTTP has no listing).
    fn list_top(&self) -> Result<Option<Vec<String>>, BackendError> {
        Ok(None)
    }
}

/// A cache in a directory (`file://DIR`).
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    /// The cache in `dir` (created with its `nar/` and `log/` when first written).
    pub fn new(dir: &Path) -> FileBackend {
        FileBackend {
            dir: dir.to_owned(),
        }
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, key: &str) -> Result<PathBuf, BackendError> {
        let relative = Path::new(key);
        if key.is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BackendError::new(
                "read",
                self.url_of(key),
                "the key leaves the cache",
            ));
        }
        Ok(self.dir.join(relative))
    }
}

impl Backend for FileBackend {
    fn url_of(&self, key: &str) -> String {
        format!("file://{}/{key}", self.dir.display())
    }

    fn get(&self, key: &str) -> Result<Option<Download>, BackendError> {
        match fs::File::open(self.file(key)?) {
            Ok(file) => Ok(Some(Box::new(file))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(BackendError::new("read", self.url_of(key), error)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        match fs::symlink_metadata(self.file(key)?) {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(BackendError::new("read", self.url_of(key), error)),
        }
    }

    fn put(&self, key: &str, body: Body<'_>, _content_type: &str) -> Result<(), BackendError> {
        let file = self.file(key)?;
        let failed = |error: io::Error| BackendError::new("write", self.url_of(key), error);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(failed)?;
        }
        let temporary = match body {
            Body::File(temporary) => temporary,
            Body::Bytes(bytes) => {
                let mut temporary = self.spool()?;
                temporary.write_all(bytes).map_err(failed)?;
                temporary
            }
        };
        temporary.as_file().sync_all().map_err(failed)?;
        temporary
            .persist(&file)
            .map_err(|error| failed(error.error))?;
        Ok(())
    }

    fn list_top(&self) -> Result<Option<Vec<String>>, BackendError> {
        let failed = |error: io::Error| BackendError::new("list", self.url_of(""), error);
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            if entry.file_type().map_err(failed)?.is_file() {
                names.extend(entry.file_name().to_str().map(str::to_owned));
            }
        }
        Ok(Some(names))
    }

    fn spool(&self) -> Result<NamedTempFile, BackendError> {
        fs::create_dir_all(&self.dir)
            .and_then(|()| {
                tempfile::Builder::new()
                    .prefix(".tmp-")
                    .tempfile_in(&self.dir)
            })
            .map_err(|error| BackendError::new("write", self.url_of(".tmp-*"), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_puts_atomically_and_refuses_keys_outside() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::new(dir.path());
        assert!(!backend.exists("a.narinfo").unwrap());
        assert!(backend.get("a.narinfo").unwrap().is_none());
        backend
            .put("nar/x.nar", Body::Bytes(b"nar"), "application/x-nix-nar")
            .unwrap();
        let mut text = String::new();
        backend
            .get("nar/x.nar")
            .unwrap()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "nar");
        for bad in ["../x", "/etc/passwd", "nar/../../x", ""] {
            assert!(backend.get(bad).is_err(), "{bad}");
            assert!(backend.put(bad, Body::Bytes(b""), "").is_err(), "{bad}");
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["nar"]);
    }
}
