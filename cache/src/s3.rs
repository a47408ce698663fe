//! `s3://BUCKET` caches on any S3-compatible object store (AWS, MinIO, Ceph RGW, Garage,
//! R2), with Nix's URL parameters: `region` (default `us-east-1`), `endpoint` (a host
//! and port, or a URL; when set, requests are path-style, as Nix makes them), `scheme`
//! (`https` by default; for an `endpoint` without one) and `profile` (of
//! `~/.aws/credentials`).
//!
//! Requests are signed (SigV4) by `rusty-s3` and sent over one keep-alive HTTP agent.
//! A 403 on a read means "no such file", as Nix takes it (S3 answers 403 rather than 404
//! when the caller may not list the bucket). A body larger than [`PART_SIZE`] is
//! uploaded in parts read one at a time from its spooled file, so memory stays bounded
//! whatever the NAR's size; a failed multipart upload is aborted.
//!
//! Credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`) from the environment, else the profile's (`profile=`, else
//! `AWS_PROFILE`, else `default`) in `$AWS_SHARED_CREDENTIALS_FILE` or
//! `~/.aws/credentials`; none at all means anonymous requests.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::backend::{open_spooled, Backend, BackendError, Body, Download};
use crate::http::{agent, not_found, request_error};

/// Parts of a multipart upload are this big (S3's minimum is 5 MiB; at most 10,000
/// parts makes 320 GiB the largest NAR).
pub const PART_SIZE: u64 = 32 << 20;

/// How long a signed request stays valid.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(3600);

/// The parameters of an `s3://` URL that say where the bucket is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub scheme: Option<String>,
    pub profile: Option<String>,
}

/// Why an `s3://` cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("s3://{bucket}: bad endpoint '{endpoint}'")]
    Endpoint {
        bucket: String,
        endpoint: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("s3://{bucket}: cannot read AWS credentials file '{}'", path.display())]
    Credentials {
        bucket: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cache in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    bucket: Bucket,
    credentials: Option<Credentials>,
    agent: ureq::Agent,
}

impl S3Backend {
    /// The bucket `location` names.
    pub fn new(location: &S3Location) -> Result<S3Backend, S3Error> {
        let region = location.region.as_deref().unwrap_or("us-east-1").to_owned();
        let scheme = location.scheme.as_deref().unwrap_or("https");
        let (endpoint, style) = match &location.endpoint {
            Some(endpoint) if endpoint.contains("://") => (endpoint.clone(), UrlStyle::Path),
            Some(endpoint) => (format!("{scheme}://{endpoint}"), UrlStyle::Path),
            None => (
                format!("{scheme}://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let bad_endpoint = |source: Box<dyn std::error::Error + Send + Sync>| S3Error::Endpoint {
            bucket: location.bucket.clone(),
            endpoint: endpoint.clone(),
            source,
        };
        let url = endpoint
            .parse()
            .map_err(|error: url::ParseError| bad_endpoint(Box::new(error)))?;
        let bucket = Bucket::new(url, style, location.bucket.clone(), region)
            .map_err(|error| bad_endpoint(format!("{error:?}").into()))?;
        Ok(S3Backend {
            bucket,
            credentials: credentials(location)?,
            agent: agent(),
        })
    }

    fn signed<'a>(&self, action: impl S3Action<'a>) -> String {
        action.sign(SIGNATURE_LIFETIME).to_string()
    }

    fn put_multipart(
        &self,
        key: &str,
        mut file: std::fs::File,
        len: u64,
    ) -> Result<(), BackendError> {
        let url = self.url_of(key);
        let failed = |error: ureq::Error| request_error("upload", &url, error);
        let create = self.signed(
            self.bucket
                .create_multipart_upload(self.credentials.as_ref(), key),
        );
        let response = self.agent.post(&create).call().map_err(failed)?;
        let text = response
            .into_string()
            .map_err(|error| BackendError::new("upload", &url, error))?;
        let created = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|error| BackendError::new("upload", &url, format!("{error:?}")))?;
        let upload_id = created.upload_id();
        let uploaded = (|| {
            let mut etags = Vec::new();
            let mut offset = 0;
            let mut number: u16 = 1;
            while offset < len {
                let size = PART_SIZE.min(len - offset);
                file.seek(SeekFrom::Start(offset))
                    .map_err(|error| BackendError::new("upload", &url, error))?;
                let part = self.signed(self.bucket.upload_part(
                    self.credentials.as_ref(),
                    key,
                    number,
                    upload_id,
                ));
                let response = self
                    .agent
                    .put(&part)
                    .set("Content-Length", &size.to_string())
                    .send((&mut file).take(size))
                    .map_err(failed)?;
                let etag = response.header("ETag").ok_or_else(|| {
                    BackendError::new("upload", &url, format!("part {number} has no ETag"))
                })?;
                etags.push(etag.to_owned());
                offset += size;
                number += 1;
            }
            let complete = self.bucket.complete_multipart_upload(
                self.credentials.as_ref(),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let signed = self.signed(complete.clone());
            self.agent
                .post(&signed)
                .send_string(&complete.body())
                .map_err(failed)?;
            Ok(())
        })();
        if uploaded.is_err() {
            let abort = self.signed(self.bucket.abort_multipart_upload(
                self.credentials.as_ref(),
                key,
                upload_id,
            ));
            let _ = self.agent.delete(&abort).call();
        }
        uploaded
    }
}

impl Backend for S3Backend {
    fn url_of(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn get(&self, key: &str) -> Result<Option<Download>, BackendError> {
        let url = self.signed(self.bucket.get_object(self.credentials.as_ref(), key));
        match self.agent.get(&url).call() {
            Ok(response) => Ok(Some(response.into_reader())),
            Err(ureq::Error::Status(status, _)) if not_found(status, true) => Ok(None),
            Err(error) => Err(request_error("download", &self.url_of(key), error)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let url = self.signed(self.bucket.head_object(self.credentials.as_ref(), key));
        match self.agent.head(&url).call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(status, _)) if not_found(status, true) => Ok(false),
            Err(error) => Err(request_error("query", &self.url_of(key), error)),
        }
    }

    /// `ListObjectsV2` with the delimiter `/`, page by page.
    fn list_top(&self) -> Result<Option<Vec<String>>, BackendError> {
        let whence = self.url_of("");
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_delimiter("/");
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let body = self
                .agent
                .get(&self.signed(action))
                .call()
                .map_err(|error| request_error("list", &whence, error))?
                .into_string()
                .map_err(|error| BackendError::new("list", whence.clone(), error))?;
            let page =
                rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|error| {
                    BackendError::new(
                        "list",
                        whence.clone(),
                        std::io::Error::other(error.to_string()),
                    )
                })?;
            names.extend(page.contents.into_iter().map(|object| object.key));
            match page.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(Some(names))
    }

    fn put(&self, key: &str, body: Body<'_>, content_type: &str) -> Result<(), BackendError> {
        let url = self.url_of(key);
        let mut action = self.bucket.put_object(self.credentials.as_ref(), key);
        action
            .headers_mut()
            .insert("content-type", content_type.to_owned());
        let sent = match body {
            Body::Bytes(bytes) => self
                .agent
                .put(&self.signed(action))
                .set("Content-Type", content_type)
                .send_bytes(bytes),
            Body::File(file) => {
                let (reader, len) = open_spooled(&file, &url)?;
                if len > PART_SIZE {
                    return self.put_multipart(key, reader, len);
                }
                self.agent
                    .put(&self.signed(action))
                    .set("Content-Type", content_type)
                    .set("Content-Length", &len.to_string())
                    .send(std::io::BufReader::with_capacity(1 << 16, reader))
            }
        };
        sent.map(drop)
            .map_err(|error| request_error("upload", &url, error))
    }
}

/// The credentials to sign with, as the module docs say.
fn credentials(location: &S3Location) -> Result<Option<Credentials>, S3Error> {
    if let Some(credentials) = Credentials::from_env() {
        return Ok(Some(credentials));
    }
    let path = match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(path) => PathBuf::from(path),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(S3Error::Credentials {
                bucket: location.bucket.clone(),
                path,
                source,
            })
        }
    };
    let profile = location
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .unwrap_or_else(|| "default".to_owned());
    Ok(profile_credentials(&text, &profile))
}

/// The keys of `profile` in the INI text of an AWS credentials file.
fn profile_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut section = String::new();
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            let value = Some(value.trim().to_owned());
            match name.trim() {
                "aws_access_key_id" => key = value,
                "aws_secret_access_key" => secret = value,
                "aws_session_token" => token = value,
                _ => {}
            }
        }
    }
    match (key, secret, token) {
        (Some(key), Some(secret), Some(token)) => {
            Some(Credentials::new_with_token(key, secret, token))
        }
        (Some(key), Some(secret), None) => Some(Credentials::new(key, secret)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_the_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\
                    [other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        let default = profile_credentials(text, "default").unwrap();
        assert_eq!((default.key(), default.secret()), ("A", "B"));
        let other = profile_credentials(text, "other").unwrap();
        assert_eq!((other.key(), other.token()), ("C", Some("E")));
        assert!(profile_credentials(text, "missing").is_none());
    }

    #[test]
    fn an_endpoint_means_path_style_urls() {
        let backend = S3Backend::new(&S3Location {
            bucket: "cache".into(),
            endpoint: Some("127.0.0.1:9000".into()),
            scheme: Some("http".into()),
            ..S3Location::default()
        })
        .unwrap();
        assert_eq!(
            backend.bucket.object_url("x.narinfo").as_str(),
            "http://127.0.0.1:9000/cache/x.narinfo"
        );
        let aws = S3Backend::new(&S3Location {
            bucket: "cache".into(),
            region: Some("eu-west-1".into()),
            ..S3Location::default()
        })
        .unwrap();
        assert_eq!(
            aws.bucket.object_url("x.narinfo").as_str(),
            "https://cache.s3.eu-west-1.amazonaws.com/x.narinfo"
        );
    }
}
