//! Nix's machines files and `builders` setting: the remote machines builds may run on,
//! each with the systems and features it builds, its slots and its speed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One line of a machines file: where a machine is and what it builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The store URI (`ssh://[USER@]HOST`, `ssh-ng://…`; a bare host means `ssh://`).
    pub uri: String,
    /// Systems it builds (`x86_64-linux`, …).
    pub systems: Vec<String>,
    /// The ssh private key to log in with.
    pub ssh_key: Option<PathBuf>,
    /// Builds at once.
    pub max_jobs: usize,
    /// How fast it is relative to others (at least 1).
    pub speed_factor: u32,
    /// Features it supports.
    pub supported_features: BTreeSet<String>,
    /// Features a derivation must ask for to be built there.
    pub mandatory_features: BTreeSet<String>,
    /// Its ssh host key, base64.
    pub host_key: Option<String>,
}

/// A machines specification that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MachinesError {
    #[error("bad machine specification: {reason}: '{line}'")]
    Line { line: String, reason: String },
    #[error("cannot read machines file '{}'", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Machine {
    /// Parses Nix's `builders` value: lines separated by `;` or newlines, `#` comments,
    /// `@FILE` for the lines of a file (a missing file is no machines); each line
    /// `URI [SYSTEMS [SSH-KEY [MAX-JOBS [SPEED [FEATURES [MANDATORY [HOST-KEY]]]]]]]`,
    /// `-` for a column's default (systems: `this_system`).
    pub fn parse_all(builders: &str, this_system: &str) -> Result<Vec<Machine>, MachinesError> {
        let mut machines = Vec::new();
        for line in builders.split(['\n', ';']) {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(path) = line.strip_prefix('@') {
                let path = Path::new(path.trim());
                match std::fs::read_to_string(path) {
                    Ok(text) => machines.extend(Machine::parse_all(&text, this_system)?),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(MachinesError::File {
                            path: path.to_owned(),
                            source,
                        })
                    }
                }
                continue;
            }
            machines.push(Machine::parse_line(line, this_system)?);
        }
        Ok(machines)
    }

    fn parse_line(line: &str, this_system: &str) -> Result<Machine, MachinesError> {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let bad = |reason: String| MachinesError::Line {
            line: line.to_owned(),
            reason,
        };
        let field = |index: usize| tokens.get(index).copied().filter(|t| *t != "-");
        let number = |index: usize, default: u64| match field(index) {
            None => Ok(default),
            Some(text) => text.parse::<u64>().map_err(|_| {
                bad(format!(
                    "column {index} ('{text}') is not a non-negative number"
                ))
            }),
        };
        let set = |index: usize| -> BTreeSet<String> {
            field(index)
                .map(|t| {
                    t.split(',')
                        .filter(|f| !f.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default()
        };
        let uri = field(0).ok_or_else(|| bad("no store URI in the first column".into()))?;
        // As Nix: a bare host name means ssh://.
        let uri = if uri.contains("://") || uri.contains('/') || uri.starts_with("local") {
            uri.to_owned()
        } else {
            format!("ssh://{uri}")
        };
        let host_key = field(7).map(String::from);
        if let Some(key) = &host_key {
            data_encoding::BASE64
                .decode(key.as_bytes())
                .map_err(|_| bad(format!("column 7 ('{key}') is not base64")))?;
        }
        Ok(Machine {
            uri,
            systems: field(1).map_or_else(
                || vec![this_system.to_owned()],
                |t| t.split(',').map(String::from).collect(),
            ),
            ssh_key: field(2).map(PathBuf::from),
            max_jobs: usize::try_from(number(3, 1)?).unwrap_or(usize::MAX),
            speed_factor: u32::try_from(number(4, 1)?).unwrap_or(u32::MAX).max(1),
            supported_features: set(5),
            mandatory_features: set(6),
            host_key,
        })
    }

    /// Whether it builds `system` with `features` (Nix's `allSupported` and
    /// `mandatoryMet`), or why not.
    pub fn fits(&self, system: &str, features: &BTreeSet<String>) -> Result<(), String> {
        if system != "builtin" && !self.systems.iter().any(|s| s == system) {
            return Err(format!("it does not build {system}"));
        }
        let missing: Vec<&str> = features
            .iter()
            .filter(|f| {
                !self.supported_features.contains(*f) && !self.mandatory_features.contains(*f)
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("it lacks the features {}", missing.join(", ")));
        }
        let unasked: Vec<&str> = self
            .mandatory_features
            .iter()
            .filter(|f| !features.contains(*f))
            .map(String::as_str)
            .collect();
        if !unasked.is_empty() {
            return Err(format!(
                "it builds only derivations asking for {}",
                unasked.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_s_machine_lines_parse() {
        let machines = Machine::parse_all(
            "ssh://a x86_64-linux,i686-linux /k 4 2 kvm,big big c2Vj\n\
             # a comment\n; b - - - - - -;ssh-ng://root@c?remote-program=arca  # trailing",
            "x86_64-linux",
        )
        .unwrap();
        assert_eq!(machines.len(), 3);
        let a = &machines[0];
        assert_eq!(a.uri, "ssh://a");
        assert_eq!(a.systems, ["x86_64-linux", "i686-linux"]);
        assert_eq!(a.ssh_key, Some(PathBuf::from("/k")));
        assert_eq!((a.max_jobs, a.speed_factor), (4, 2));
        assert!(a.supported_features.contains("kvm"));
        assert!(a.mandatory_features.contains("big"));
        assert_eq!(a.host_key.as_deref(), Some("c2Vj"));
        // A bare host is ssh://; "-" is each column's default.
        let b = &machines[1];
        assert_eq!(b.uri, "ssh://b");
        assert_eq!(b.systems, ["x86_64-linux"]);
        assert_eq!(
            (b.max_jobs, b.speed_factor, b.ssh_key.clone()),
            (1, 1, None)
        );
        assert_eq!(machines[2].uri, "ssh-ng://root@c?remote-program=arca");
    }

    #[test]
    fn machines_files_are_read_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machines");
        std::fs::write(&file, "ssh://x - - 2\n").unwrap();
        let machines = Machine::parse_all(&format!("@{}", file.display()), "s").unwrap();
        assert_eq!(machines[0].max_jobs, 2);
        assert!(Machine::parse_all("@/nonexistent/machines", "s")
            .unwrap()
            .is_empty());
        let error = Machine::parse_all("ssh://x - - many", "s")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("'many'") && error.contains("ssh://x - - many"),
            "{error}"
        );
        let error = Machine::parse_all("ssh://x - - 1 1 - - !!", "s")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not base64"), "{error}");
    }

    #[test]
    fn systems_and_features_decide_what_fits() {
        let m = &Machine::parse_all("ssh://a x86_64-linux - 1 1 kvm big", "s").unwrap()[0];
        let set = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(m.fits("x86_64-linux", &set(&["big"])).is_ok());
        assert!(m.fits("x86_64-linux", &set(&["big", "kvm"])).is_ok());
        assert!(m
            .fits("aarch64-linux", &set(&["big"]))
            .unwrap_err()
            .contains("aarch64-linux"));
        assert!(m
            .fits("x86_64-linux", &set(&[]))
            .unwrap_err()
            .contains("asking for big"));
        assert!(m
            .fits("x86_64-linux", &set(&["big", "cuda"]))
            .unwrap_err()
            .contains("cuda"));
        assert!(m.fits("builtin", &set(&["big"])).is_ok());
    }
}
