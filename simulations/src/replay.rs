//! `courier-sim replay report.json`: rerun a deterministic report from the
//! scenario text and seed it embeds and check the new report is identical.
//!
//! Identical means every field of `report.json` except `courier` (the build
//! that wrote it): a replay by another build is still a check of the
//! result, and the build difference is reported beside the verdict.
//! Loopback reports are not replayable — real processes on real time do not
//! repeat — and are refused.

use serde_json::Value;

use crate::deterministic::{self, Options, Sabotage, SimError};
use crate::report::{Build, Report, SCHEMA_VERSION, sha256_hex};
use crate::scenario::{Scenario, ScenarioError};

/// Most differing fields listed in a verdict.
const DIFFERENCES_MAX: usize = 20;

/// Why a report could not be replayed (as opposed to replaying differently).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file is not JSON.
    #[error("not a report: {0}")]
    Json(#[from] serde_json::Error),
    /// A field the replay needs is missing or has the wrong type.
    #[error("not a report: field `{0}` is missing or malformed")]
    Field(&'static str),
    /// The report was written with another schema.
    #[error("report schema {found}; this courier-sim reads schema {SCHEMA_VERSION}")]
    Schema {
        /// The report's `schema_version`.
        found: u64,
    },
    /// The report is of a mode that does not replay.
    #[error(
        "a {0} report cannot be replayed: only deterministic runs repeat exactly (rerun it with `courier-sim loopback`)"
    )]
    NotDeterministic(String),
    /// The embedded scenario text does not match its recorded digest.
    #[error(
        "the embedded scenario text does not match its SHA-256 {recorded} (it hashes to {actual})"
    )]
    Tampered {
        /// `scenario_source.sha256`.
        recorded: String,
        /// SHA-256 of `scenario_source.text`.
        actual: String,
    },
    /// The embedded scenario no longer parses.
    #[error("the embedded scenario: {0}")]
    Scenario(#[from] ScenarioError),
    /// The rerun failed to run.
    #[error("the rerun: {0}")]
    Run(#[from] SimError),
}

/// The outcome of a replay.
#[derive(Debug)]
pub struct Replay {
    /// The report produced by the rerun.
    pub report: Report,
    /// The build recorded in the original report.
    pub original_build: Build,
    /// Fields whose values differ, as JSON paths with both values (at most
    /// [`DIFFERENCES_MAX`]); empty when the rerun is identical.
    pub differences: Vec<String>,
}

impl Replay {
    /// True when the rerun reproduced the report exactly.
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Reruns the deterministic report `json` (the text of a `report.json`).
pub fn replay(json: &str) -> Result<Replay, ReplayError> {
    let original: Value = serde_json::from_str(json)?;
    let schema = original
        .get("schema_version")
        .and_then(Value::as_u64)
        .ok_or(ReplayError::Field("schema_version"))?;
    if schema != u64::from(SCHEMA_VERSION) {
        return Err(ReplayError::Schema { found: schema });
    }
    let mode = str_field(&original, "mode", &["mode"])?;
    if mode != "deterministic" {
        return Err(ReplayError::NotDeterministic(mode.to_string()));
    }
    let text = str_field(
        &original,
        "scenario_source.text",
        &["scenario_source", "text"],
    )?;
    let recorded = str_field(
        &original,
        "scenario_source.sha256",
        &["scenario_source", "sha256"],
    )?;
    let actual = sha256_hex(text);
    if actual != recorded {
        return Err(ReplayError::Tampered {
            recorded: recorded.to_string(),
            actual,
        });
    }
    let seed = original
        .get("seed")
        .and_then(Value::as_u64)
        .ok_or(ReplayError::Field("seed"))?;
    let sabotage: Option<Sabotage> = match original.get("sabotage") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(serde_json::from_value(v.clone()).map_err(|_| ReplayError::Field("sabotage"))?)
        }
    };
    let original_build = Build {
        version: str_field(&original, "courier.version", &["courier", "version"])?.to_string(),
        commit: str_field(&original, "courier.commit", &["courier", "commit"])?.to_string(),
    };
    let scenario = Scenario::parse(text)?;
    let report = deterministic::run(
        &scenario,
        &Options {
            seed,
            progress: false,
            sabotage,
        },
    )?;
    let rerun = serde_json::to_value(&report)?;
    let mut differences = Vec::new();
    if let (Value::Object(a), Value::Object(b)) = (&original, &rerun) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys.into_iter().filter(|k| k.as_str() != "courier") {
            diff(
                key,
                a.get(key).unwrap_or(&Value::Null),
                b.get(key).unwrap_or(&Value::Null),
                &mut differences,
            );
        }
    }
    Ok(Replay {
        report,
        original_build,
        differences,
    })
}

fn str_field<'a>(v: &'a Value, name: &'static str, path: &[&str]) -> Result<&'a str, ReplayError> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .ok_or(ReplayError::Field(name))
}

/// Appends `path: a != b` for every leaf where `a` and `b` differ.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if out.len() >= DIFFERENCES_MAX || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ => out.push(format!("{path}: report {} != rerun {}", short(a), short(b))),
    }
}

/// A value for a message, cut to a readable length.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_the_leaf_that_differs() {
        let a = serde_json::json!({"x": {"y": [1, 2, 3]}, "z": "same"});
        let b = serde_json::json!({"x": {"y": [1, 5, 3]}, "z": "same"});
        let mut out = Vec::new();
        diff("r", &a, &b, &mut out);
        assert_eq!(out, vec!["r.x.y[1]: report 2 != rerun 5".to_string()]);
    }
}
