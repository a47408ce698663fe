//! Nix's configuration files, read as Nix 2.8 reads them (`Config::applyConfig`).
//!
//! A file is lines of `name = value`; `#` starts a comment anywhere on a line; a value is
//! the rest of the line's words joined by single spaces; `include PATH` reads another
//! file (relative to the including file's directory) and fails if it is missing,
//! `!include PATH` skips a missing one. Where the settings come from, in order (later
//! ones win), is [`ConfigSources`]: `$NIX_CONF_DIR/nix.conf` (default
//! `/etc/nix/nix.conf`), Arca's own `arca.conf` beside it, the user's files
//! (`$NIX_USER_CONF_FILES`, else `nix/nix.conf` under `$XDG_CONFIG_DIRS` and
//! `$XDG_CONFIG_HOME`), Arca's own file (`$ARCA_CONFIG`, else
//! `$XDG_CONFIG_HOME/arca/arca.conf` when it exists, else `/etc/arca/arca.conf`), then
//! the text of `$NIX_CONFIG`.
//!
//! This module knows nothing of what a setting means: it yields `(name, value)`
//! assignments in order, each with where it came from, and the typed settings
//! (`arca_build::Settings`) apply them, `extra-` prefixes included.

use std::fmt;
use std::path::{Path, PathBuf};

/// One `name = value` line, with where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub value: String,
    /// The file and line, or `$NIX_CONFIG`, or `--option`.
    pub origin: String,
}

/// Why configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("illegal configuration line '{line}' in '{origin}'")]
    IllegalLine { line: String, origin: String },
    #[error("cannot read configuration file '{}'", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file '{}' includes itself (through {depth} includes)", path.display())]
    IncludeLoop { path: PathBuf, depth: usize },
}

/// Most nested includes (a loop is an error, not a stack overflow).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Parses configuration text. `origin` names it in errors and in each [`Assignment`];
/// `dir` is where relative includes are looked up (`None`, as for `$NIX_CONFIG`: the
/// working directory, as Nix does).
pub fn parse(text: &str, origin: &str, dir: Option<&Path>) -> Result<Vec<Assignment>, ConfigError> {
    let mut out = Vec::new();
    parse_into(text, origin, dir, 0, &mut out)?;
    Ok(out)
}

/// Reads a configuration file with its includes.
pub fn read_file(path: &Path) -> Result<Vec<Assignment>, ConfigError> {
    let mut out = Vec::new();
    read_file_into(path, 0, &mut out)?;
    Ok(out)
}

fn read_file_into(path: &Path, depth: usize, out: &mut Vec<Assignment>) -> Result<(), ConfigError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(ConfigError::IncludeLoop {
            path: path.to_owned(),
            depth,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_into(
        &text,
        &path.display().to_string(),
        path.parent(),
        depth,
        out,
    )
}

fn parse_into(
    text: &str,
    origin: &str,
    dir: Option<&Path>,
    depth: usize,
    out: &mut Vec<Assignment>,
) -> Result<(), ConfigError> {
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default();
        let tokens: Vec<&str> = line.split_ascii_whitespace().collect();
        if tokens.is_empty() {
            continue;
        }
        let illegal = || ConfigError::IllegalLine {
            line: raw.to_string(),
            origin: origin.to_string(),
        };
        if tokens[0] == "include" || tokens[0] == "!include" {
            if tokens.len() != 2 {
                return Err(illegal());
            }
            let included = match dir {
                Some(dir) => dir.join(tokens[1]),
                None => PathBuf::from(tokens[1]),
            };
            if tokens[0] == "!include" && !included.exists() {
                continue;
            }
            read_file_into(&included, depth + 1, out)?;
            continue;
        }
        if tokens.len() < 2 || tokens[1] != "=" {
            return Err(illegal());
        }
        out.push(Assignment {
            name: tokens[0].to_string(),
            value: tokens[2..].join(" "),
            origin: format!("{origin}:{}", number + 1),
        });
    }
    Ok(())
}

/// Where configuration is read from, in order. [`ConfigSources::from_env`] is what Nix
/// reads; tests and embedders build their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    /// Files read in order; a missing one is skipped.
    pub files: Vec<PathBuf>,
    /// Configuration text applied after the files (`$NIX_CONFIG`).
    pub text: Option<String>,
}

impl ConfigSources {
    /// Nix's: `$NIX_CONF_DIR/nix.conf` (default `/etc/nix`), then `arca.conf` in the same
    /// directory, then the user's files, then Arca's own file (`$ARCA_CONFIG`, else
    /// `$XDG_CONFIG_HOME/arca/arca.conf` when it exists, else `/etc/arca/arca.conf`),
    /// then `$NIX_CONFIG`.
    pub fn from_env() -> ConfigSources {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let conf_dir = var("NIX_CONF_DIR").map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
        let mut files = vec![conf_dir.join("nix.conf"), conf_dir.join("arca.conf")];
        match var("NIX_USER_CONF_FILES") {
            Some(list) => files.extend(std::env::split_paths(&list)),
            None => {
                // Nix reads `$XDG_CONFIG_DIRS` (lowest priority first) and then
                // `$XDG_CONFIG_HOME`.
                let dirs = var("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into());
                let mut user: Vec<PathBuf> = std::env::split_paths(&dirs)
                    .map(|dir| dir.join("nix/nix.conf"))
                    .collect();
                user.reverse();
                files.extend(user);
                let home = var("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")));
                if let Some(home) = home {
                    files.push(home.join("nix/nix.conf"));
                }
            }
        }
        // Arca's own file: `$ARCA_CONFIG`, else the user's `arca/arca.conf` when there is
        // one, else `/etc/arca/arca.conf`.
        let user_arca = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")))
            .map(|dir| dir.join("arca/arca.conf"));
        files.push(match (var("ARCA_CONFIG"), user_arca) {
            (Some(file), _) => PathBuf::from(file),
            (None, Some(user)) if user.exists() => user,
            _ => PathBuf::from("/etc/arca/arca.conf"),
        });
        ConfigSources {
            files,
            text: std::env::var("NIX_CONFIG").ok().filter(|t| !t.is_empty()),
        }
    }

    /// Every assignment, in order.
    pub fn read(&self) -> Result<Vec<Assignment>, ConfigError> {
        let mut out = Vec::new();
        for file in &self.files {
            if file.exists() {
                read_file_into(file, 0, &mut out)?;
            }
        }
        if let Some(text) = &self.text {
            parse_into(text, "$NIX_CONFIG", None, 0, &mut out)?;
        }
        Ok(out)
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} ({})", self.name, self.value, self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(assignments: &[Assignment]) -> Vec<(&str, &str)> {
        assignments
            .iter()
            .map(|a| (a.name.as_str(), a.value.as_str()))
            .collect()
    }

    #[test]
    fn lines_comments_and_words_as_nix_reads_them() {
        let text = "# a comment\n\n  sandbox   =  false  # trailing\nextra-sandbox-paths = /a   /b\nbuild-users-group =\n";
        let parsed = parse(text, "t", None).unwrap();
        assert_eq!(
            pairs(&parsed),
            [
                ("sandbox", "false"),
                ("extra-sandbox-paths", "/a /b"),
                ("build-users-group", "")
            ]
        );
        assert_eq!(parsed[0].origin, "t:3");
    }

    #[test]
    fn a_line_without_equals_is_an_error_naming_it() {
        let error = parse("sandbox false\n", "nix.conf", None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "illegal configuration line 'sandbox false' in 'nix.conf'"
        );
        assert!(parse("include\n", "x", None).is_err());
        assert!(parse("= 1\n", "x", None).is_err());
    }

    #[test]
    fn includes_are_relative_and_bang_include_may_be_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nix.conf"),
            "a = 1\ninclude extra.conf\n!include missing.conf\nc = 3\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("extra.conf"), "b = 2\n").unwrap();
        let parsed = read_file(&dir.path().join("nix.conf")).unwrap();
        assert_eq!(pairs(&parsed), [("a", "1"), ("b", "2"), ("c", "3")]);

        std::fs::write(dir.path().join("nix.conf"), "include missing.conf\n").unwrap();
        let error = read_file(&dir.path().join("nix.conf")).unwrap_err();
        assert!(
            matches!(error, ConfigError::Read { ref path, .. } if path.ends_with("missing.conf"))
        );
    }

    #[test]
    fn an_include_loop_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "include nix.conf\n").unwrap();
        let error = read_file(&dir.path().join("nix.conf")).unwrap_err();
        assert!(matches!(error, ConfigError::IncludeLoop { .. }), "{error}");
    }

    #[test]
    fn sources_apply_files_in_order_then_the_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nix.conf"), "a = 1\n").unwrap();
        std::fs::write(dir.path().join("arca.conf"), "a = 2\n").unwrap();
        let sources = ConfigSources {
            files: vec![
                dir.path().join("nix.conf"),
                dir.path().join("absent.conf"),
                dir.path().join("arca.conf"),
            ],
            text: Some("a = 3\nb = x y".into()),
        };
        let parsed = sources.read().unwrap();
        assert_eq!(
            pairs(&parsed),
            [("a", "1"), ("a", "2"), ("a", "3"), ("b", "x y")]
        );
        assert_eq!(parsed[2].origin, "$NIX_CONFIG:1");
    }
}
