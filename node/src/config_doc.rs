//! The documentation of `courier.toml`, generated from the config structs
//! themselves: each setting's text is its field's doc comment, its default
//! is what `Config::default()` serializes to, and the order is field order.
//! From them come the commented example config (`docs/courier.example.toml`,
//! and the `courier.toml` a first start writes) and the settings tables of
//! `docs/operator.md`; a test fails when either committed file differs.
//!
//! The doc comments are read through `utoipa::ToSchema`, already in the tree
//! for the OpenAPI document and able to see doc comments and serde renames
//! at compile time, rather than through a second macro or a copy of the
//! text: adding a setting is adding a documented field (with its default),
//! nothing else.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::config::Config;

/// Regenerates `docs/courier.example.toml` and the tables in
/// `docs/operator.md` when run with `COURIER_REGENERATE_DOCS=1`.
pub const REGENERATE: &str =
    "COURIER_REGENERATE_DOCS=1 cargo test -p courier-node --lib config_doc";

/// One setting of `courier.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Its key inside its table.
    pub key: String,
    /// Its doc comment, lines joined by `\n`.
    pub doc: String,
    /// Its value in the config it was read from; `None` when unset.
    pub value: Option<toml::Value>,
}

/// A table of `courier.toml`: the top level (`name` empty) or `[name]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The table name; empty for the top level.
    pub name: String,
    /// The doc comment of the table's struct.
    pub doc: String,
    /// Its settings, in field order.
    pub settings: Vec<Setting>,
}

/// Why the config structs could not be documented: a field without a doc
/// comment, or a shape this module does not read.
#[derive(Debug, thiserror::Error)]
#[error("courier.toml documentation: {0}")]
pub struct DocError(String);

fn description(schema: &RefOr<Schema>) -> Option<String> {
    match schema {
        RefOr::Ref(r) => Some(r.description.clone()).filter(|d| !d.is_empty()),
        RefOr::T(Schema::Object(o)) => o.description.clone(),
        RefOr::T(Schema::Array(a)) => a.description.clone(),
        // `Option<T>`: the field's doc sits on the `T` branch.
        RefOr::T(Schema::OneOf(one)) => one
            .description
            .clone()
            .or_else(|| one.items.iter().find_map(description)),
        RefOr::T(Schema::AllOf(all)) => all
            .description
            .clone()
            .or_else(|| all.items.iter().find_map(description)),
        _ => None,
    }
}

fn referenced(schema: &RefOr<Schema>) -> Option<String> {
    match schema {
        RefOr::Ref(r) => r.ref_location.rsplit('/').next().map(str::to_owned),
        _ => None,
    }
}

/// The sections of `config` with its values, top level first.
pub fn sections(config: &Config) -> Result<Vec<Section>, DocError> {
    let tree = toml::Value::try_from(config).map_err(|e| DocError(e.to_string()))?;
    let mut components = Vec::new();
    <Config as ToSchema>::schemas(&mut components);
    let component = |name: &str| {
        components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    };
    let mut top = Section {
        name: String::new(),
        doc: description(&Config::schema()).unwrap_or_default(),
        settings: Vec::new(),
    };
    let mut tables = Vec::new();
    for (key, field, value) in fields(&Config::schema(), &tree, "")? {
        if let Some(toml::Value::Table(table)) = &value {
            let name = referenced(&field)
                .and_then(|n| component(&n))
                .ok_or_else(|| DocError(format!("[{key}] is not a documented struct")))?;
            let mut section = Section {
                name: key.clone(),
                doc: description(&name).unwrap_or_default(),
                settings: Vec::new(),
            };
            let table = toml::Value::Table(table.clone());
            for (sub, field, value) in fields(&name, &table, &key)? {
                section
                    .settings
                    .push(setting(&format!("{key}.{sub}"), sub, &field, value)?);
            }
            tables.push(section);
        } else {
            top.settings
                .push(setting(&key, key.clone(), &field, value)?);
        }
    }
    let mut all = vec![top];
    all.extend(tables);
    Ok(all)
}

type Field = (String, RefOr<Schema>, Option<toml::Value>);

fn fields(schema: &RefOr<Schema>, tree: &toml::Value, at: &str) -> Result<Vec<Field>, DocError> {
    let RefOr::T(Schema::Object(object)) = schema else {
        return Err(DocError(format!("[{at}] is not an object schema")));
    };
    Ok(object
        .properties
        .iter()
        .map(|(key, field)| (key.clone(), field.clone(), tree.get(key).cloned()))
        .collect())
}

fn setting(
    path: &str,
    key: String,
    field: &RefOr<Schema>,
    value: Option<toml::Value>,
) -> Result<Setting, DocError> {
    let doc = description(field).ok_or_else(|| DocError(format!("{path} has no doc comment")))?;
    Ok(Setting { key, doc, value })
}

fn literal(value: &toml::Value) -> String {
    value.to_string()
}

/// `config` as a commented `courier.toml`: every setting preceded by its
/// doc comment, unset ones commented out. It parses back to `config`.
pub fn example(config: &Config) -> Result<String, DocError> {
    let mut out = String::from(
        "# Courier relay configuration. Every setting is listed with what it does;\n\
         # the values are the effective ones when this file was written.\n\
         # Flags and COURIER_* environment variables override them (docs/operator.md).\n",
    );
    for section in sections(config)? {
        out.push('\n');
        if !section.name.is_empty() {
            for line in section.doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("[{}]\n", section.name));
        }
        for s in &section.settings {
            for line in s.doc.lines() {
                out.push_str(&format!("# {line}\n"));
            }
            match &s.value {
                Some(value) => out.push_str(&format!("{} = {}\n", s.key, literal(value))),
                None => out.push_str(&format!("# {} = (unset)\n", s.key)),
            }
            out.push('\n');
        }
        if out.ends_with("\n\n") {
            out.pop();
        }
    }
    Ok(out)
}

/// The markdown table of `section` (empty name: the top level) with the
/// defaults, as `docs/operator.md` shows it.
pub fn operator_table(section: &str) -> Result<String, DocError> {
    let sections = sections(&Config::default())?;
    let section = sections
        .iter()
        .find(|s| s.name == section)
        .ok_or_else(|| DocError(format!("no section [{section}]")))?;
    let mut out = String::from("| setting | default | meaning |\n| --- | --- | --- |\n");
    for s in &section.settings {
        let default = match &s.value {
            Some(value) => format!("`{}`", literal(value)),
            None => "unset".to_owned(),
        };
        let meaning = s
            .doc
            .split('\n')
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|");
        out.push_str(&format!("| `{}` | {default} | {meaning} |\n", s.key));
    }
    Ok(out)
}

/// The names of every section, top level (empty) first.
pub fn section_names() -> Result<Vec<String>, DocError> {
    Ok(sections(&Config::default())?
        .into_iter()
        .map(|s| s.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn docs_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
    }

    fn regenerating() -> bool {
        std::env::var_os("COURIER_REGENERATE_DOCS").is_some()
    }

    fn begin_marker(section: &str) -> String {
        let name = if section.is_empty() {
            "top level"
        } else {
            section
        };
        format!("<!-- generated: courier.toml {name}; regenerate: {REGENERATE} -->\n")
    }

    const END_MARKER: &str = "<!-- end generated -->";

    /// `text` with each section's generated block replaced by `generate`'s.
    fn with_tables(text: &str) -> Result<String, String> {
        let mut out = text.to_owned();
        for section in section_names().map_err(|e| e.to_string())? {
            let begin = begin_marker(&section);
            let start = out
                .find(&begin)
                .ok_or_else(|| format!("docs/operator.md lacks the line {begin:?}"))?
                + begin.len();
            let end = start
                + out[start..]
                    .find(END_MARKER)
                    .ok_or_else(|| format!("no {END_MARKER} after {begin:?}"))?;
            let table = operator_table(&section).map_err(|e| e.to_string())?;
            out.replace_range(start..end, &table);
        }
        Ok(out)
    }

    #[test]
    fn committed_example_and_operator_tables_are_generated_from_the_config() {
        let example_path = docs_dir().join("courier.example.toml");
        let operator_path = docs_dir().join("operator.md");
        let example = example(&Config::default()).unwrap();
        let operator = std::fs::read_to_string(&operator_path).unwrap();
        let generated = with_tables(&operator).unwrap();
        if regenerating() {
            std::fs::write(&example_path, &example).unwrap();
            std::fs::write(&operator_path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&example_path).unwrap_or_default();
        assert!(
            committed == example,
            "docs/courier.example.toml is not what the config structs generate; run {REGENERATE}"
        );
        assert!(
            operator == generated,
            "the settings tables of docs/operator.md are not what the config structs generate; \
             run {REGENERATE}"
        );
    }

    #[test]
    fn the_example_is_a_config_that_reads_back_as_itself() {
        let defaults = example(&Config::default()).unwrap();
        assert_eq!(
            toml::from_str::<Config>(&defaults).unwrap(),
            Config::default()
        );
        let mut set = Config {
            name: "relay-a.example".to_owned(),
            database_url: Some("postgres://courier@db/courier".to_owned()),
            ..Config::default()
        };
        set.federation.deny = vec!["evil.example".to_owned()];
        set.rate_limit.ip_per_second = 0.5;
        let text = example(&set).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), set);
        assert!(text.contains("# database_schema = (unset)"), "{text}");
    }

    #[test]
    fn every_setting_is_documented_in_field_order() {
        let sections = sections(&Config::default()).unwrap();
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "",
                "log",
                "relay",
                "http",
                "rate_limit",
                "websocket",
                "federation",
                "prekey_budget"
            ]
        );
        let top: Vec<&str> = sections[0]
            .settings
            .iter()
            .map(|s| s.key.as_str())
            .collect();
        assert_eq!(&top[..3], ["name", "http_listen", "public_url"]);
        // Every key the config serializes is documented, and nothing else.
        let tree = toml::Value::try_from(Config::default()).unwrap();
        for section in &sections {
            let table = if section.name.is_empty() {
                &tree
            } else {
                &tree[section.name.as_str()]
            };
            for (key, value) in table.as_table().unwrap() {
                if value.is_table() && section.name.is_empty() {
                    continue;
                }
                let setting = section
                    .settings
                    .iter()
                    .find(|s| &s.key == key)
                    .unwrap_or_else(|| panic!("[{}] {key} is not documented", section.name));
                assert_eq!(setting.value.as_ref(), Some(value));
                assert!(!setting.doc.trim().is_empty());
            }
        }
        let relay = operator_table("relay").unwrap();
        assert!(
            relay.contains(
                "| `mailbox_depth_max` | `10000` | Most envelopes waiting for one device"
            ),
            "{relay}"
        );
    }
}
