//! The JSON form of `nix show-derivation` (Nix 2.8):
//! `{ "<drv path>": { "outputs": {…}, "inputSrcs": […], "inputDrvs": {…}, "system": …,
//! "builder": …, "args": […], "env": {…} } }`.
//!
//! [`show_derivations_json`] prints it byte for byte as Nix does: two-space indentation,
//! keys in that order, and Nix's string escapes (control characters other than newline, CR
//! and tab as `\u00xx`, everything else, including non-ASCII, as is).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use serde::{Deserialize, Serialize};

use super::aterm::{output_from_fields, OutputFields, OutputSource};
use super::{Derivation, DerivationOutput, OutputName, ParseErrorKind};
use crate::store_path::{validate_name, StoreDir, StorePath};

/// One derivation in the JSON form. Store paths are full paths (they include the store
/// dir). Fields that `arca derivation add` can do without are optional when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DerivationJson {
    /// Not printed by Nix 2.8; accepted when reading, for derivations without a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub outputs: BTreeMap<String, DerivationOutputJson>,
    #[serde(default)]
    pub input_srcs: Vec<String>,
    #[serde(default)]
    pub input_drvs: BTreeMap<String, Vec<String>>,
    pub system: String,
    pub builder: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One output in the JSON form: `path` when known, `hashAlgo` and `hash` when fixed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DerivationOutputJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_algo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// `true` for an output of an impure derivation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impure: Option<bool>,
}

/// Derivation JSON that does not describe a derivation Arca accepts.
#[derive(Debug, thiserror::Error)]
pub enum DerivationJsonError {
    #[error("derivation JSON is malformed")]
    Syntax(#[from] serde_json::Error),
    #[error("derivation '{derivation}' in JSON is invalid: {kind}")]
    Invalid {
        /// The derivation's path or name.
        derivation: String,
        #[source]
        kind: ParseErrorKind,
    },
    #[error("derivation in JSON has no name (neither a path, a 'name' field nor env 'name')")]
    MissingName,
}

impl DerivationJson {
    /// The JSON form of `drv`.
    pub fn from_derivation(store_dir: &StoreDir, drv: &Derivation) -> DerivationJson {
        let outputs = drv
            .outputs
            .iter()
            .map(|(name, output)| {
                let content_addressed = output.content_hashing().is_some();
                let fixed = matches!(output, DerivationOutput::Fixed { .. });
                let json = DerivationOutputJson {
                    path: output.path().map(|path| store_dir.display(path)),
                    hash_algo: content_addressed.then(|| output.hash_algo_field()),
                    hash: fixed.then(|| output.hash_field()),
                    impure: matches!(output, DerivationOutput::Impure { .. }).then_some(true),
                };
                (name.to_string(), json)
            })
            .collect();
        DerivationJson {
            name: None,
            outputs,
            input_srcs: drv
                .input_srcs
                .iter()
                .map(|p| store_dir.display(p))
                .collect(),
            input_drvs: drv
                .input_drvs
                .iter()
                .map(|(path, outputs)| {
                    let outputs = outputs.iter().map(OutputName::to_string).collect();
                    (store_dir.display(path), outputs)
                })
                .collect(),
            system: drv.system.clone(),
            builder: drv.builder.clone(),
            args: drv.args.clone(),
            env: drv.env.clone(),
        }
    }

    /// The derivation this JSON describes. Its name is `name` if given (the name from the
    /// `.drv` path), else the `name` field, else `env["name"]`. Missing output paths make
    /// input-addressed outputs deferred and fixed outputs get their computed path; see
    /// [`super::compute_output_paths`] to fill in the rest.
    pub fn into_derivation(
        self,
        store_dir: &StoreDir,
        name: Option<&str>,
    ) -> Result<Derivation, DerivationJsonError> {
        let name = name
            .map(str::to_owned)
            .or(self.name)
            .or_else(|| self.env.get("name").cloned())
            .ok_or(DerivationJsonError::MissingName)?;
        let invalid = |kind| DerivationJsonError::Invalid {
            derivation: name.clone(),
            kind,
        };
        validate_name(&name).map_err(|source| {
            invalid(ParseErrorKind::InvalidName {
                name: name.clone(),
                source,
            })
        })?;
        let parse_path = |path: &str| {
            store_dir.parse_path(path).map_err(|source| {
                invalid(ParseErrorKind::InvalidStorePath {
                    path: path.to_owned(),
                    source,
                })
            })
        };
        let output_name = |output: &str| {
            OutputName::new(output).map_err(|_| {
                invalid(ParseErrorKind::InvalidOutputName {
                    name: output.to_owned(),
                })
            })
        };

        let mut outputs = BTreeMap::new();
        for (output, json) in &self.outputs {
            let output = output_name(output)?;
            let fields = OutputFields {
                path: json.path.as_deref().unwrap_or_default(),
                hash_algo: json.hash_algo.as_deref().unwrap_or_default(),
                hash: match json.impure {
                    Some(true) => "impure",
                    _ => json.hash.as_deref().unwrap_or_default(),
                },
            };
            let value = output_from_fields(store_dir, &name, &output, fields, OutputSource::Json)
                .map_err(|(_, kind)| invalid(kind))?;
            outputs.insert(output, value);
        }
        let mut input_drvs = BTreeMap::new();
        for (path, wanted) in &self.input_drvs {
            let wanted = wanted
                .iter()
                .map(|output| output_name(output))
                .collect::<Result<BTreeSet<_>, _>>()?;
            input_drvs.insert(parse_path(path)?, wanted);
        }
        let input_srcs = self
            .input_srcs
            .iter()
            .map(|path| parse_path(path))
            .collect::<Result<_, _>>()?;
        Ok(Derivation {
            name,
            outputs,
            input_drvs,
            input_srcs,
            system: self.system,
            builder: self.builder,
            args: self.args,
            env: self.env,
        })
    }
}

/// The output of `nix show-derivation` for these derivations, byte for byte (sorted by
/// path, as Nix prints them, with a final newline).
pub fn show_derivations_json<'a>(
    store_dir: &StoreDir,
    derivations: impl IntoIterator<Item = (&'a StorePath, &'a Derivation)>,
) -> String {
    let by_path: BTreeMap<String, DerivationJson> = derivations
        .into_iter()
        .map(|(path, drv)| {
            let json = DerivationJson::from_derivation(store_dir, drv);
            (store_dir.display(path), json)
        })
        .collect();
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, NixFormatter::new());
    if let Err(error) = by_path.serialize(&mut serializer) {
        unreachable!("serializing strings and maps into a Vec cannot fail: {error}");
    }
    out.push(b'\n');
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(_) => unreachable!("serde_json writes UTF-8"),
    }
}

/// Reads the `{ "<drv path>": {…}, … }` form (`nix show-derivation`'s output), taking each
/// derivation's name from its path.
pub fn parse_show_derivation_json(
    store_dir: &StoreDir,
    json: &str,
) -> Result<Vec<(StorePath, Derivation)>, DerivationJsonError> {
    let by_path: BTreeMap<String, DerivationJson> = serde_json::from_str(json)?;
    by_path
        .into_iter()
        .map(|(path_text, json)| {
            let invalid = |kind| DerivationJsonError::Invalid {
                derivation: path_text.clone(),
                kind,
            };
            let path = store_dir.parse_path(&path_text).map_err(|source| {
                invalid(ParseErrorKind::InvalidStorePath {
                    path: path_text.clone(),
                    source,
                })
            })?;
            let name = Derivation::name_from_drv_path(&path).ok_or_else(|| {
                invalid(ParseErrorKind::NotADrvPath {
                    path: path_text.clone(),
                })
            })?;
            let drv = json
                .into_derivation(store_dir, Some(name))
                .map_err(|error| match error {
                    DerivationJsonError::Invalid { kind, .. } => invalid(kind),
                    other => other,
                })?;
            Ok((path, drv))
        })
        .collect()
}

/// serde_json's pretty printer with Nix's string escapes: Nix writes backspace and form
/// feed as `\u0008` and `\u000c` where serde_json would write `\b` and `\f`.
struct NixFormatter(serde_json::ser::PrettyFormatter<'static>);

impl NixFormatter {
    fn new() -> NixFormatter {
        NixFormatter(serde_json::ser::PrettyFormatter::with_indent(b"  "))
    }
}

impl serde_json::ser::Formatter for NixFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
    }
    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> io::Result<()> {
        use serde_json::ser::CharEscape;
        let control = |byte: u8| {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]
        };
        match escape {
            CharEscape::Quote => w.write_all(b"\\\""),
            CharEscape::ReverseSolidus => w.write_all(b"\\\\"),
            CharEscape::Solidus => w.write_all(b"/"),
            CharEscape::LineFeed => w.write_all(b"\\n"),
            CharEscape::CarriageReturn => w.write_all(b"\\r"),
            CharEscape::Tab => w.write_all(b"\\t"),
            CharEscape::Backspace => w.write_all(&control(0x08)),
            CharEscape::FormFeed => w.write_all(&control(0x0c)),
            CharEscape::AsciiControl(byte) => w.write_all(&control(byte)),
        }
    }
}
