//! Binary cache URLs, as Nix writes them: `file:///DIR`, `http://HOST[:PORT][/PATH]`,
//! `https://…`, `s3://BUCKET`, each with `?NAME=VALUE&…` parameters.
//!
//! Parameters every cache takes: `secret-key=FILE` (sign what is written),
//! `compression=none|xz|zstd|bzip2|gzip` (of the NARs written; default `xz`, as Nix),
//! `priority=N` and `want-mass-query=BOOL` (override the cache's `nix-cache-info`),
//! `write-nar-listing=BOOL` (write each path's `<hash part>.ls`, as Nix does).
//! `s3://` adds `region`, `endpoint`, `scheme` and `profile` ([`crate::s3`]). Nix's
//! tuning parameters that do not change what is written or read (`parallel-compression`,
//! `compression-level`, `multipart-upload`, `buffer-size`, `write-debug-info`, `local-nar-cache`) are accepted and ignored; any other parameter
//! is an error naming it.

use std::path::PathBuf;

use crate::narinfo::Compression;
use crate::s3::S3Location;

/// Where a cache is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `file://DIR` (absolute).
    File(PathBuf),
    /// `http://…` or `https://…`, without parameters.
    Http(String),
    /// `s3://BUCKET`.
    S3(S3Location),
}

/// A parsed cache URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL as given, without its parameters (what messages name).
    pub base: String,
    pub location: Location,
    /// `secret-key`.
    pub secret_key: Option<PathBuf>,
    /// `compression` (default xz).
    pub compression: Compression,
    /// `priority`.
    pub priority: Option<u32>,
    /// `want-mass-query`.
    pub want_mass_query: Option<bool>,
    /// `write-nar-listing` (default false).
    pub write_nar_listing: bool,
}

/// A URL that names no cache Arca can open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binary cache URL '{url}': {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Parameters Nix takes that change nothing Arca writes or reads.
const IGNORED: &[&str] = &[
    "parallel-compression",
    "compression-level",
    "multipart-upload",
    "buffer-size",
    "write-debug-info",
    "local-nar-cache",
    "narinfo-compression",
    "ls-compression",
    "log-compression",
];

impl CacheUrl {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<CacheUrl, UrlError> {
        let error = |reason: String| UrlError {
            url: url.to_owned(),
            reason,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut s3 = None;
        let location = if let Some(dir) = base.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(error("the directory must be an absolute path".into()));
            }
            Location::File(PathBuf::from(dir))
        } else if base.starts_with("http://") || base.starts_with("https://") {
            let host = base.split_once("://").map_or("", |(_, rest)| rest);
            if host.is_empty() || host.starts_with('/') {
                return Err(error("it has no host".into()));
            }
            Location::Http(base.trim_end_matches('/').to_owned())
        } else if let Some(bucket) = base.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(error("expected s3://BUCKET".into()));
            }
            s3 = Some(S3Location {
                bucket: bucket.to_owned(),
                ..S3Location::default()
            });
            Location::File(PathBuf::new()) // replaced below, once parameters are read
        } else {
            return Err(error(
                "only file://, http://, https:// and s3:// caches are supported".into(),
            ));
        };
        let mut parsed = CacheUrl {
            base: base.to_owned(),
            location,
            secret_key: None,
            compression: Compression::Xz,
            priority: None,
            want_mass_query: None,
            write_nar_listing: false,
        };
        for parameter in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            let boolean = |value: &str| match value {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(error(format!(
                    "{name} must be true or false, not '{value}'"
                ))),
            };
            match (name, s3.as_mut()) {
                ("secret-key", _) => parsed.secret_key = Some(PathBuf::from(value)),
                ("compression", _) => {
                    parsed.compression = Compression::from_name(value)
                        .ok_or_else(|| error(format!("unknown compression method '{value}'")))?
                }
                ("priority", _) => {
                    parsed.priority = Some(
                        value
                            .parse()
                            .map_err(|_| error(format!("bad priority '{value}'")))?,
                    )
                }
                ("want-mass-query", _) => parsed.want_mass_query = Some(boolean(value)?),
                ("write-nar-listing", _) => parsed.write_nar_listing = boolean(value)?,
                ("region", Some(s3)) => s3.region = Some(value.to_owned()),
                ("endpoint", Some(s3)) => s3.endpoint = Some(value.to_owned()),
                ("scheme", Some(s3)) => s3.scheme = Some(value.to_owned()),
                ("profile", Some(s3)) => s3.profile = Some(value.to_owned()),
                (name, _) if IGNORED.contains(&name) => {}
                (name, _) => return Err(error(format!("unknown parameter '{name}'"))),
            }
        }
        if let Some(s3) = s3 {
            parsed.location = Location::S3(s3);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_s_urls_parse() {
        let file = CacheUrl::parse("file:///tmp/c?secret-key=/k&compression=zstd").unwrap();
        assert_eq!(file.location, Location::File("/tmp/c".into()));
        assert_eq!(file.secret_key, Some("/k".into()));
        assert_eq!(file.compression, Compression::Zstd);
        assert_eq!(file.base, "file:///tmp/c");

        let http = CacheUrl::parse("http://127.0.0.1:8080/?priority=10").unwrap();
        assert_eq!(
            http.location,
            Location::Http("http://127.0.0.1:8080".into())
        );
        assert_eq!(http.priority, Some(10));
        assert_eq!(http.compression, Compression::Xz);

        let s3 = CacheUrl::parse(
            "s3://cache?endpoint=127.0.0.1:9000&scheme=http&region=eu&profile=p&parallel-compression=true",
        )
        .unwrap();
        assert_eq!(
            s3.location,
            Location::S3(S3Location {
                bucket: "cache".into(),
                region: Some("eu".into()),
                endpoint: Some("127.0.0.1:9000".into()),
                scheme: Some("http".into()),
                profile: Some("p".into()),
            })
        );
    }

    #[test]
    fn bad_urls_are_refused_naming_what_is_wrong() {
        for (url, reason) in [
            ("file://relative", "absolute"),
            ("ftp://x", "only file://"),
            ("http://", "no host"),
            ("s3://", "s3://BUCKET"),
            ("s3://a/b", "s3://BUCKET"),
            (
                "file:///c?compression=lz4",
                "unknown compression method 'lz4'",
            ),
            ("file:///c?colour=blue", "unknown parameter 'colour'"),
            ("file:///c?endpoint=x", "unknown parameter 'endpoint'"),
            ("http://h?priority=high", "bad priority 'high'"),
        ] {
            let error = CacheUrl::parse(url).unwrap_err();
            assert!(error.to_string().contains(reason), "{url}: {error}");
        }
    }
}
