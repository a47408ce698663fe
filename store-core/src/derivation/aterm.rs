//! The ATerm text form of `.drv` files:
//! `Derive([outputs],[inputDrvs],[inputSrcs],"system","builder",[args],[env])`.
//!
//! The grammar has a fixed nesting depth, so the parser is a flat loop over the bytes with
//! no recursion; its work is linear in the input length.

use std::collections::{BTreeMap, BTreeSet};

use super::{fixed_output_path, Derivation, DerivationOutput, OutputName};
use crate::hash::{Hash, HashAlgo, HashError};
use crate::store_path::{validate_name, ContentAddressMethod, StoreDir, StorePath, StorePathError};

/// A `.drv` text that is not a derivation Arca accepts, with the byte offset at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("derivation is malformed at byte {offset}: {kind}")]
pub struct DerivationParseError {
    /// Offset in the input of the token (or string) at fault.
    pub offset: usize,
    pub kind: ParseErrorKind,
}

/// What was wrong in a `.drv` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("expected {expected}")]
    Expected { expected: &'static str },
    #[error("unexpected data after the end of the derivation")]
    TrailingData,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("'{path}' is not a valid store path")]
    InvalidStorePath {
        path: String,
        #[source]
        source: StorePathError,
    },
    #[error("'{name}' is not a valid output name")]
    InvalidOutputName { name: String },
    #[error("'{what}' entry '{key}' is out of order or repeated")]
    NotSorted { what: &'static str, key: String },
    #[error("output '{output}' has unknown hash algorithm '{algo}'")]
    UnknownHashAlgo { output: String, algo: String },
    #[error("output '{output}' has invalid hash '{hash}'")]
    InvalidHash {
        output: String,
        hash: String,
        #[source]
        source: Option<HashError>,
    },
    #[error("output '{output}' has hash '{hash}', which is not in lowercase base16")]
    NonCanonicalHash { output: String, hash: String },
    #[error("floating content-addressed or impure output '{output}' has a path")]
    FloatingOutputWithPath { output: String },
    #[error("output '{output}' has a hash but no hash algorithm")]
    HashWithoutAlgo { output: String },
    #[error("fixed output '{output}' has no path")]
    FixedOutputWithoutPath { output: String },
    #[error("fixed output '{output}' has path '{found}' but its hash gives '{expected}'")]
    FixedOutputPathMismatch {
        output: String,
        found: String,
        expected: String,
    },
    #[error("derivation name '{name}' is not a valid store path name")]
    InvalidName {
        name: String,
        #[source]
        source: StorePathError,
    },
    #[error("'{path}' is not the path of a .drv file")]
    NotADrvPath { path: String },
}

impl Derivation {
    /// Parses a `.drv` file's contents. `name` is the derivation's name (the `.drv` file's
    /// name without `.drv`; see [`Derivation::parse_drv_file`]); it is needed to check the
    /// paths of fixed outputs.
    pub fn parse(store_dir: &StoreDir, name: &str, input: &[u8]) -> Result<Derivation> {
        Parser {
            input,
            pos: 0,
            store_dir,
        }
        .derivation(name)
    }

    /// Parses the contents of the `.drv` file at `drv_path`, taking the name from the path.
    pub fn parse_drv_file(
        store_dir: &StoreDir,
        drv_path: &StorePath,
        input: &[u8],
    ) -> Result<Derivation> {
        let name =
            Derivation::name_from_drv_path(drv_path).ok_or_else(|| DerivationParseError {
                offset: 0,
                kind: ParseErrorKind::NotADrvPath {
                    path: store_dir.display(drv_path),
                },
            })?;
        Derivation::parse(store_dir, name, input)
    }

    /// The ATerm text of this derivation, exactly as Nix writes it to a `.drv` file.
    pub fn to_aterm(&self, store_dir: &StoreDir) -> String {
        let mut out = String::with_capacity(self.aterm_size_hint());
        self.write_aterm(store_dir, &mut out, false, None);
        out
    }

    fn aterm_size_hint(&self) -> usize {
        let strings: usize = self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>();
        256 + strings + 120 * (self.outputs.len() + self.input_drvs.len() + self.input_srcs.len())
    }

    /// Writes the ATerm form. With `mask_outputs`, output paths and the env entries named
    /// after outputs print as empty strings; with `input_hashes`, the input derivations are
    /// replaced by these (hash-modulo, outputs) pairs. Both serve `hashDerivationModulo`.
    pub(crate) fn write_aterm(
        &self,
        store_dir: &StoreDir,
        out: &mut String,
        mask_outputs: bool,
        input_hashes: Option<&BTreeMap<String, BTreeSet<OutputName>>>,
    ) {
        out.push_str("Derive([");
        for (i, (name, output)) in self.outputs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('(');
            write_string(out, name.as_str());
            out.push(',');
            match output.path() {
                Some(path) if !mask_outputs => write_path(out, store_dir, path),
                _ => out.push_str("\"\""),
            }
            out.push(',');
            write_string(out, &output.hash_algo_field());
            out.push(',');
            write_string(out, &output.hash_field());
            out.push(')');
        }
        out.push_str("],[");
        match input_hashes {
            None => write_input_drvs(
                out,
                self.input_drvs
                    .iter()
                    .map(|(path, outputs)| (store_dir.display(path), outputs)),
            ),
            Some(hashes) => write_input_drvs(
                out,
                hashes.iter().map(|(hash, outputs)| (hash.clone(), outputs)),
            ),
        }
        out.push_str("],[");
        for (i, path) in self.input_srcs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_path(out, store_dir, path);
        }
        out.push_str("],");
        write_string(out, &self.system);
        out.push(',');
        write_string(out, &self.builder);
        out.push_str(",[");
        for (i, arg) in self.args.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, arg);
        }
        out.push_str("],[");
        for (i, (key, value)) in self.env.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('(');
            write_string(out, key);
            out.push(',');
            if mask_outputs && self.outputs.contains_key(key.as_str()) {
                out.push_str("\"\"");
            } else {
                write_string(out, value);
            }
            out.push(')');
        }
        out.push_str("])");
    }
}

fn write_input_drvs<'a>(
    out: &mut String,
    inputs: impl Iterator<Item = (String, &'a BTreeSet<OutputName>)>,
) {
    for (i, (key, outputs)) in inputs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('(');
        write_string(out, &key);
        out.push_str(",[");
        for (j, output) in outputs.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            write_string(out, output.as_str());
        }
        out.push_str("])");
    }
}

fn write_path(out: &mut String, store_dir: &StoreDir, path: &StorePath) {
    write_string(out, &store_dir.display(path));
}

/// Writes `s` quoted, escaping exactly what Nix escapes: `"`, `\`, newline, CR and tab.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(['"', '\\', '\n', '\r', '\t']) {
        out.push_str(&rest[..i]);
        let escape = match rest.as_bytes()[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        };
        out.push_str(escape);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

type Result<T> = std::result::Result<T, DerivationParseError>;

impl<'a> Parser<'a> {
    fn error(&self, offset: usize, kind: ParseErrorKind) -> DerivationParseError {
        DerivationParseError { offset, kind }
    }

    fn expect(&mut self, literal: &'static str) -> Result<()> {
        if self.input[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error(self.pos, ParseErrorKind::Expected { expected: literal }))
        }
    }

    /// Consumes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        if self.input.get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Parses a list body after its `[`: items separated by `,` up to `]`.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            item(self)?;
            if self.eat(b']') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(self.error(
                    self.pos,
                    ParseErrorKind::Expected {
                        expected: "',' or ']'",
                    },
                ));
            }
        }
    }

    /// A quoted string, unescaped Nix's way: `\n`, `\r`, `\t` are control characters and
    /// `\` before any other byte stands for that byte.
    fn string(&mut self) -> Result<(usize, String)> {
        let start = self.pos;
        self.expect("\"")?;
        let mut bytes = Vec::new();
        loop {
            let rest = &self.input[self.pos..];
            let Some(i) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
                return Err(self.error(
                    self.input.len(),
                    ParseErrorKind::Expected {
                        expected: "'\"' closing the string",
                    },
                ));
            };
            bytes.extend_from_slice(&rest[..i]);
            self.pos += i + 1;
            if rest[i] == b'"' {
                break;
            }
            let Some(&escaped) = self.input.get(self.pos) else {
                return Err(self.error(
                    self.pos,
                    ParseErrorKind::Expected {
                        expected: "a character after '\\'",
                    },
                ));
            };
            bytes.push(match escaped {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                other => other,
            });
            self.pos += 1;
        }
        String::from_utf8(bytes)
            .map(|s| (start, s))
            .map_err(|_| self.error(start, ParseErrorKind::InvalidUtf8))
    }

    fn store_path(&mut self) -> Result<StorePath> {
        let (offset, s) = self.string()?;
        self.store_dir.parse_path(&s).map_err(|source| {
            self.error(offset, ParseErrorKind::InvalidStorePath { path: s, source })
        })
    }

    fn output_name(&mut self) -> Result<OutputName> {
        let (offset, s) = self.string()?;
        OutputName::new(&s)
            .map_err(|_| self.error(offset, ParseErrorKind::InvalidOutputName { name: s }))
    }

    fn string_list(&mut self) -> Result<Vec<String>> {
        self.expect("[")?;
        let mut items = Vec::new();
        self.list(|p| {
            items.push(p.string()?.1);
            Ok(())
        })?;
        Ok(items)
    }

    fn derivation(mut self, name: &str) -> Result<Derivation> {
        // Nix requires a derivation's name to be a store path name; checked first so that
        // no derivation with a name that cannot form its paths is ever returned.
        validate_name(name).map_err(|source| {
            let name = name.to_owned();
            self.error(0, ParseErrorKind::InvalidName { name, source })
        })?;
        self.expect("Derive([")?;
        let mut outputs = BTreeMap::new();
        self.list(|p| {
            let (offset, output, value) = p.output(name)?;
            insert_sorted(&mut outputs, output, value, "outputs", offset, p)
        })?;
        self.expect(",[")?;
        let mut input_drvs = BTreeMap::new();
        self.list(|p| {
            p.expect("(")?;
            let offset = p.pos;
            let path = p.store_path()?;
            p.expect(",[")?;
            let mut names = BTreeSet::new();
            p.list(|p| {
                let offset = p.pos;
                let output = p.output_name()?;
                insert_sorted_set(&mut names, output, "input derivation outputs", offset, p)
            })?;
            p.expect(")")?;
            insert_sorted(&mut input_drvs, path, names, "inputDrvs", offset, p)
        })?;
        self.expect(",[")?;
        let mut input_srcs = BTreeSet::new();
        self.list(|p| {
            let offset = p.pos;
            let path = p.store_path()?;
            insert_sorted_set(&mut input_srcs, path, "inputSrcs", offset, p)
        })?;
        self.expect(",")?;
        let system = self.string()?.1;
        self.expect(",")?;
        let builder = self.string()?.1;
        self.expect(",")?;
        let args = self.string_list()?;
        self.expect(",[")?;
        let mut env = BTreeMap::new();
        self.list(|p| {
            p.expect("(")?;
            let (offset, key) = p.string()?;
            p.expect(",")?;
            let value = p.string()?.1;
            p.expect(")")?;
            insert_sorted(&mut env, key, value, "env", offset, p)
        })?;
        self.expect(")")?;
        if self.pos != self.input.len() {
            return Err(self.error(self.pos, ParseErrorKind::TrailingData));
        }
        Ok(Derivation {
            name: name.to_owned(),
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        })
    }

    /// `("name","path","hashAlgo","hash")`.
    fn output(&mut self, drv_name: &str) -> Result<(usize, OutputName, DerivationOutput)> {
        self.expect("(")?;
        let offset = self.pos;
        let name = self.output_name()?;
        self.expect(",")?;
        let (path_offset, path) = self.string()?;
        self.expect(",")?;
        let (algo_offset, algo) = self.string()?;
        self.expect(",")?;
        let (hash_offset, hash) = self.string()?;
        self.expect(")")?;
        let fields = OutputFields {
            path: &path,
            hash_algo: &algo,
            hash: &hash,
        };
        match output_from_fields(self.store_dir, drv_name, &name, fields, OutputSource::Aterm) {
            Ok(output) => Ok((offset, name, output)),
            Err((field, kind)) => {
                let at = match field {
                    OutputField::Name => offset,
                    OutputField::Path => path_offset,
                    OutputField::HashAlgo => algo_offset,
                    OutputField::Hash => hash_offset,
                };
                Err(self.error(at, kind))
            }
        }
    }
}

/// The textual fields of an output, as found in the ATerm and JSON forms.
pub(crate) struct OutputFields<'a> {
    pub path: &'a str,
    pub hash_algo: &'a str,
    pub hash: &'a str,
}

/// Which of an output's fields an error is about.
pub(crate) enum OutputField {
    Name,
    Path,
    HashAlgo,
    Hash,
}

/// Where an output's fields come from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputSource {
    /// A `.drv` file: everything must be in the one form Nix prints.
    Aterm,
    /// JSON for `arca derivation add`: a fixed output may omit its path (it gets the
    /// computed one) and give its hash in any encoding Nix accepts.
    Json,
}

/// Classifies an output the way Nix 2.8 does, but refuses the combinations whose printed
/// form would differ from the text read: a hash without algorithm, a hash not in
/// lowercase base16, a fixed path that is not the one its hash gives.
pub(crate) fn output_from_fields(
    store_dir: &StoreDir,
    drv_name: &str,
    name: &OutputName,
    fields: OutputFields<'_>,
    source: OutputSource,
) -> std::result::Result<DerivationOutput, (OutputField, ParseErrorKind)> {
    let output = || name.as_str().to_owned();
    let parse_path = |path: &str| {
        store_dir.parse_path(path).map_err(|source| {
            (
                OutputField::Path,
                ParseErrorKind::InvalidStorePath {
                    path: path.to_owned(),
                    source,
                },
            )
        })
    };

    if fields.hash_algo.is_empty() {
        if !fields.hash.is_empty() {
            let kind = ParseErrorKind::HashWithoutAlgo { output: output() };
            return Err((OutputField::Hash, kind));
        }
        if fields.path.is_empty() {
            return Ok(DerivationOutput::Deferred);
        }
        let path = parse_path(fields.path)?;
        return Ok(DerivationOutput::InputAddressed { path });
    }

    let (method, algo_name) = match fields.hash_algo.strip_prefix("r:") {
        Some(rest) => (ContentAddressMethod::Recursive, rest),
        None => (ContentAddressMethod::Flat, fields.hash_algo),
    };
    let algo = HashAlgo::from_name(algo_name).map_err(|_| {
        let kind = ParseErrorKind::UnknownHashAlgo {
            output: output(),
            algo: fields.hash_algo.to_owned(),
        };
        (OutputField::HashAlgo, kind)
    })?;
    if fields.hash.is_empty() || fields.hash == "impure" {
        // Floating or impure: the path is known only after the build.
        if !fields.path.is_empty() {
            let kind = ParseErrorKind::FloatingOutputWithPath { output: output() };
            return Err((OutputField::Path, kind));
        }
        return Ok(if fields.hash.is_empty() {
            DerivationOutput::Floating { method, algo }
        } else {
            DerivationOutput::Impure { method, algo }
        });
    }
    let hash = parse_unprefixed_hash(fields.hash, algo).map_err(|source| {
        let kind = ParseErrorKind::InvalidHash {
            output: output(),
            hash: fields.hash.to_owned(),
            source,
        };
        (OutputField::Hash, kind)
    })?;
    if source == OutputSource::Aterm && hash.to_base16() != fields.hash {
        let kind = ParseErrorKind::NonCanonicalHash {
            output: output(),
            hash: fields.hash.to_owned(),
        };
        return Err((OutputField::Hash, kind));
    }
    let expected =
        fixed_output_path(store_dir, drv_name, name, method, &hash).map_err(|source| {
            let kind = ParseErrorKind::InvalidName {
                name: drv_name.to_owned(),
                source,
            };
            (OutputField::Name, kind)
        })?;
    if fields.path.is_empty() {
        if source == OutputSource::Json {
            return Ok(DerivationOutput::Fixed {
                method,
                hash,
                path: expected,
            });
        }
        let kind = ParseErrorKind::FixedOutputWithoutPath { output: output() };
        return Err((OutputField::Path, kind));
    }
    let path = parse_path(fields.path)?;
    // Nix recomputes a fixed output's path from its hash when printing, so a stored path
    // that disagrees would not survive a round trip: refuse it.
    if expected != path {
        let kind = ParseErrorKind::FixedOutputPathMismatch {
            output: output(),
            found: store_dir.display(&path),
            expected: store_dir.display(&expected),
        };
        return Err((OutputField::Path, kind));
    }
    Ok(DerivationOutput::Fixed { method, hash, path })
}

/// Nix's `Hash::parseNonSRIUnprefixed`: base16, nix-base32 or base64 by length, but no
/// `algo:` prefix and no SRI form.
pub(crate) fn parse_unprefixed_hash(
    s: &str,
    algo: HashAlgo,
) -> std::result::Result<Hash, Option<HashError>> {
    if s.contains(':') || s.contains('-') {
        return Err(None);
    }
    Hash::parse(s, Some(algo)).map_err(Some)
}

fn insert_sorted<K: Ord + AsKey, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    what: &'static str,
    offset: usize,
    parser: &Parser<'_>,
) -> Result<()> {
    if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
        return Err(parser.error(
            offset,
            ParseErrorKind::NotSorted {
                what,
                key: key.as_key(),
            },
        ));
    }
    map.insert(key, value);
    Ok(())
}

fn insert_sorted_set<K: Ord + AsKey>(
    set: &mut BTreeSet<K>,
    key: K,
    what: &'static str,
    offset: usize,
    parser: &Parser<'_>,
) -> Result<()> {
    if set.last().is_some_and(|last| *last >= key) {
        return Err(parser.error(
            offset,
            ParseErrorKind::NotSorted {
                what,
                key: key.as_key(),
            },
        ));
    }
    set.insert(key);
    Ok(())
}

/// How a key is named in a [`ParseErrorKind::NotSorted`] error.
trait AsKey {
    fn as_key(&self) -> String;
}

impl AsKey for String {
    fn as_key(&self) -> String {
        self.clone()
    }
}

impl AsKey for OutputName {
    fn as_key(&self) -> String {
        self.as_str().to_owned()
    }
}

impl AsKey for StorePath {
    fn as_key(&self) -> String {
        self.as_str().to_owned()
    }
}
