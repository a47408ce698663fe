//! Structured attributes (`__structuredAttrs = true`, the `__json` variable of a
//! derivation), as Nix 2.8 hands them to a builder: `.attrs.json` (the attributes with
//! `outputs` replaced by an object from output name to path, keys sorted, compact) and
//! `.attrs.sh` (`declare` lines for the attributes a shell can hold), both in the build
//! directory; the derivation's variables are then not in the environment at all.

use std::collections::BTreeMap;

use arca_store_core::derivation::OutputName;
use arca_store_core::{StoreDir, StorePath};
use serde_json::{Map, Value};

/// The two files, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructuredAttrs {
    /// `.attrs.json`.
    pub json: String,
    /// `.attrs.sh`.
    pub shell: String,
    /// The parsed attributes (with `outputs` filled in), for `outputChecks`.
    pub value: Value,
}

/// Builds both files from the `__json` text and the derivation's outputs.
pub fn structured_attrs(
    json_text: &str,
    outputs: &BTreeMap<OutputName, StorePath>,
    store_dir: &StoreDir,
) -> Result<StructuredAttrs, String> {
    let mut value: Value = serde_json::from_str(json_text)
        .map_err(|err| format!("its structured attributes (__json) are not JSON: {err}"))?;
    let Value::Object(attrs) = &mut value else {
        return Err("its structured attributes (__json) are not a JSON object".into());
    };
    let outputs: Map<String, Value> = outputs
        .iter()
        .map(|(name, path)| {
            (
                name.as_str().to_string(),
                Value::String(store_dir.display(path)),
            )
        })
        .collect();
    attrs.insert("outputs".into(), Value::Object(outputs));
    let value = sorted(value);
    let json = serde_json::to_string(&value).expect("a JSON value always serialises");
    let shell = shell_declarations(&value);
    Ok(StructuredAttrs { json, shell, value })
}

/// Adds `extra` to the attributes `attrs` (an object) and renders both files again:
/// (`.attrs.json`, `.attrs.sh`).
pub(crate) fn with_attrs(attrs: &mut Value, extra: Map<String, Value>) -> (String, String) {
    if let Value::Object(map) = attrs {
        map.extend(extra);
    }
    *attrs = sorted(std::mem::take(attrs));
    let json = serde_json::to_string(attrs).expect("a JSON value always serialises");
    (json, shell_declarations(attrs))
}

/// Objects with their keys in byte order, as Nix's JSON library keeps them.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// `.attrs.sh`: one `declare` per top-level attribute whose name is a shell variable
/// name and whose value is simple (string, integer, boolean, null), a list of simple
/// values (`declare -a`) or an object of simple values (`declare -A`); others (floats,
/// nested structures) are left out, as Nix leaves them out.
fn shell_declarations(value: &Value) -> String {
    let Value::Object(attrs) = value else {
        return String::new();
    };
    let mut out = String::new();
    for (name, value) in attrs {
        if !is_shell_name(name) {
            continue;
        }
        if let Some(simple) = simple(value) {
            out.push_str(&format!("declare {name}={simple}\n"));
            continue;
        }
        match value {
            Value::Array(items) => {
                let words: Option<String> = items
                    .iter()
                    .map(|item| simple(item).map(|s| s + " "))
                    .collect();
                if let Some(words) = words {
                    out.push_str(&format!("declare -a {name}=({words})\n"));
                }
            }
            Value::Object(map) => {
                let pairs: Option<String> = map
                    .iter()
                    .map(|(key, item)| simple(item).map(|s| format!("[{}]={s} ", quote(key))))
                    .collect();
                if let Some(pairs) = pairs {
                    out.push_str(&format!("declare -A {name}=({pairs})\n"));
                }
            }
            _ => {}
        }
    }
    out
}

fn simple(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(quote(text)),
        Value::Number(number) if number.is_i64() || number.is_u64() => Some(number.to_string()),
        Value::Bool(true) => Some("1".into()),
        Value::Bool(false) => Some(String::new()),
        Value::Null => Some("''".into()),
        _ => None,
    }
}

/// Single quotes, with `'` written as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Nix 2.8 wrote for this derivation (built with `--option sandbox true`).
    #[test]
    fn files_match_what_nix_writes() {
        let json_text = r#"{"PATH":"/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb","bad-name":"v","builder":"/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb/busybox","deep":{"a":{"b":1}},"flt":1.5,"list":["a","b c",3],"name":"sa","nested":{"x":1,"y":"z"},"no":false,"nul":null,"num":42,"quote":"it's \"q\" $x `y`","str":"hello world","system":"x86_64-linux","yes":true}"#;
        let out = StorePath::from_base_name("lp1kkhlwabwdmqv2wlj96x962361q6gq-sa").unwrap();
        let outputs = BTreeMap::from([(OutputName::out(), out)]);
        let attrs = structured_attrs(json_text, &outputs, &StoreDir::default()).unwrap();
        assert_eq!(
            attrs.json,
            r#"{"PATH":"/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb","bad-name":"v","builder":"/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb/busybox","deep":{"a":{"b":1}},"flt":1.5,"list":["a","b c",3],"name":"sa","nested":{"x":1,"y":"z"},"no":false,"nul":null,"num":42,"outputs":{"out":"/nix/store/lp1kkhlwabwdmqv2wlj96x962361q6gq-sa"},"quote":"it's \"q\" $x `y`","str":"hello world","system":"x86_64-linux","yes":true}"#
        );
        assert_eq!(
            attrs.shell,
            "declare PATH='/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb'\n\
             declare builder='/nix/store/ch80k1g7i8965zi1drnwlrff7qrfphfk-bb/busybox'\n\
             declare -a list=('a' 'b c' 3 )\n\
             declare name='sa'\n\
             declare -A nested=(['x']=1 ['y']='z' )\n\
             declare no=\n\
             declare nul=''\n\
             declare num=42\n\
             declare -A outputs=(['out']='/nix/store/lp1kkhlwabwdmqv2wlj96x962361q6gq-sa' )\n\
             declare quote='it'\\''s \"q\" $x `y`'\n\
             declare str='hello world'\n\
             declare system='x86_64-linux'\n\
             declare yes=1\n"
        );
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let outputs = BTreeMap::new();
        assert!(structured_attrs("{", &outputs, &StoreDir::default()).is_err());
        assert!(structured_attrs("[1]", &outputs, &StoreDir::default()).is_err());
    }
}
