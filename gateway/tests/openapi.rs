//! `/v1/openapi.json` describes the JSON the relay really sends and
//! accepts: values of every protocol wire type, drawn from the protocol's
//! proptest strategies and encoded by serde exactly as the gateway encodes
//! them, validate against the schema of that name in the generated
//! document; every schema and every request and response body in the
//! document is covered; and a value serde refuses is refused by the schema
//! too.
//!
//! No JSON Schema validator crate is available to this workspace, so
//! [`check`] below validates the keywords utoipa emits and fails on any
//! keyword it does not know, rather than silently accepting it.

use std::collections::{BTreeMap, BTreeSet};

use courier_gateway::openapi::document;
use courier_protocol::api::*;
use courier_protocol::strategies as s;
use courier_protocol::{
    Address, ApiError, Bytes, ClientFrame, DeviceId, EnvelopeId, ErrorBody, ErrorCode,
    OutgoingMessage, RecipientEntry, RelayName, ServerFrame, Username,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Values drawn per wire type.
const SAMPLES_PER_TYPE: usize = 24;

fn doc() -> Value {
    serde_json::to_value(document()).expect("the document serializes")
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Validates `value` against `schema`, resolving `$ref`s in `doc`; the error
/// names the JSON path and the keyword that failed.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(keywords) = schema.as_object() else {
        return Err(format!("{at}: schema is not an object: {schema}"));
    };
    for (keyword, rule) in keywords {
        match keyword.as_str() {
            // Annotations: no effect on validity.
            "description" | "title" | "default" | "examples" | "example" | "format"
            | "contentEncoding" | "deprecated" => {}
            "$ref" => {
                let target = rule
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .and_then(|name| doc["components"]["schemas"].get(name))
                    .ok_or_else(|| format!("{at}: unresolved $ref {rule}"))?;
                check(doc, target, value, at)?;
            }
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{at}: bad type {rule}")),
                };
                if !types.iter().any(|t| has_type(value, t)) {
                    return Err(format!("{at}: {value} is not of type {rule}"));
                }
            }
            "enum" => {
                let allowed = rule.as_array().ok_or(format!("{at}: bad enum"))?;
                if !allowed.contains(value) {
                    return Err(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "oneOf" => {
                let branches = rule.as_array().ok_or(format!("{at}: bad oneOf"))?;
                let results: Vec<_> = branches.iter().map(|b| check(doc, b, value, at)).collect();
                let matching = results.iter().filter(|r| r.is_ok()).count();
                if matching != 1 {
                    let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
                    return Err(format!(
                        "{at}: {value} matches {matching} branches of oneOf ({})",
                        why.join("; ")
                    ));
                }
            }
            "allOf" => {
                for branch in rule.as_array().ok_or(format!("{at}: bad allOf"))? {
                    check(doc, branch, value, at)?;
                }
            }
            "pattern" => {
                if let Some(text) = value.as_str() {
                    let pattern = rule.as_str().ok_or(format!("{at}: bad pattern"))?;
                    let re = regex::Regex::new(pattern).map_err(|e| format!("{at}: {e}"))?;
                    if !re.is_match(text) {
                        return Err(format!("{at}: {value} does not match {pattern}"));
                    }
                }
            }
            "maxLength" | "minLength" => {
                if let (Some(text), Some(n)) = (value.as_str(), rule.as_u64()) {
                    let len = text.chars().count() as u64;
                    let ok = if keyword == "maxLength" {
                        len <= n
                    } else {
                        len >= n
                    };
                    if !ok {
                        return Err(format!("{at}: length {len} breaks {keyword} {n}"));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let (Some(x), Some(bound)) = (value.as_f64(), rule.as_f64()) {
                    let ok = if keyword == "minimum" {
                        x >= bound
                    } else {
                        x <= bound
                    };
                    if !ok {
                        return Err(format!("{at}: {x} breaks {keyword} {bound}"));
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        check(doc, rule, item, &format!("{at}[{i}]"))?;
                    }
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().ok_or(format!("{at}: bad required"))? {
                        let name = name.as_str().unwrap_or_default();
                        if !object.contains_key(name) {
                            return Err(format!("{at}: required field {name} missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    let properties = rule.as_object().ok_or(format!("{at}: bad properties"))?;
                    for (name, field) in object {
                        if let Some(property) = properties.get(name) {
                            check(doc, property, field, &format!("{at}.{name}"))?;
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    if rule != &Value::Bool(false) {
                        return Err(format!("{at}: unhandled additionalProperties {rule}"));
                    }
                    let declared = keywords.get("properties").and_then(Value::as_object);
                    for name in object.keys() {
                        if !declared.is_some_and(|p| p.contains_key(name)) {
                            return Err(format!("{at}: unknown field {name}"));
                        }
                    }
                }
            }
            other => return Err(format!("{at}: keyword {other} is not checked by this test")),
        }
    }
    Ok(())
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Whether serde decodes a JSON value as the type.
type Decodes = fn(&Value) -> bool;

/// JSON encodings of sample values of each wire type, by schema name.
#[derive(Default)]
struct Samples {
    by_schema: BTreeMap<String, Vec<Value>>,
    decodes: BTreeMap<String, Decodes>,
    runner: Option<TestRunner>,
}

impl Samples {
    /// Draws values of `T` from `strategy` and encodes them as the gateway
    /// does (serde_json); the schema name is `T`'s own, so a strategy can
    /// only feed the schema of the type it yields.
    fn add<T, S>(&mut self, strategy: S)
    where
        T: ToSchema + Serialize + DeserializeOwned,
        S: Strategy<Value = T>,
    {
        self.decodes.insert(T::name().into_owned(), |v| {
            serde_json::from_value::<T>(v.clone()).is_ok()
        });
        let runner = self.runner.get_or_insert_with(|| {
            TestRunner::new_with_rng(
                Config::default(),
                TestRng::deterministic_rng(Default::default()),
            )
        });
        let values = (0..SAMPLES_PER_TYPE)
            .map(|_| {
                let value = strategy
                    .new_tree(runner)
                    .expect("the strategy yields a value")
                    .current();
                serde_json::to_value(&value).expect("wire types encode")
            })
            .collect();
        self.by_schema.insert(T::name().into_owned(), values);
    }
}

/// One strategy per wire type the document names.
fn samples() -> Samples {
    let mut m = Samples::default();
    m.add::<Bytes, _>(s::bytes(64));
    m.add::<EnvelopeId, _>(s::envelope_id());
    m.add::<DeviceId, _>(s::device_id());
    m.add::<Username, _>(s::username());
    m.add::<RelayName, _>(s::relay_name());
    m.add::<Address, _>(s::address());
    m.add::<ErrorCode, _>(s::error_code());
    m.add::<ApiError, _>(s::api_error());
    m.add::<ErrorBody, _>(s::error_body());
    m.add::<RegistrationPolicy, _>(s::registration_policy());
    m.add::<RelayInfo, _>(s::relay_info());
    m.add::<DeviceKeys, _>(s::device_keys());
    m.add::<SignedPreKey, _>(s::signed_prekey());
    m.add::<OneTimePreKey, _>(s::one_time_prekey());
    m.add::<DeviceListEntry, _>(s::device_list_entry());
    m.add::<DeviceList, _>(s::device_list());
    m.add::<SignedDeviceList, _>(s::signed_device_list());
    m.add::<RegisterRequest, _>(s::register_request());
    m.add::<RegisterResponse, _>(s::register_response());
    m.add::<ChallengeRequest, _>(s::challenge_request());
    m.add::<ChallengeResponse, _>(s::challenge_response());
    m.add::<LoginRequest, _>(s::login_request());
    m.add::<TokenResponse, _>(s::token_response());
    m.add::<RefreshRequest, _>(s::refresh_request());
    m.add::<LinkRequest, _>(s::link_request());
    m.add::<LinkResponse, _>(s::link_response());
    m.add::<LinkInfo, _>(s::link_info());
    m.add::<ApproveLinkRequest, _>(s::approve_link_request());
    m.add::<ApproveLinkResponse, _>(s::approve_link_response());
    m.add::<LinkStatus, _>(s::link_status());
    m.add::<UploadOneTimePreKeys, _>(s::upload_one_time_prekeys());
    m.add::<PreKeyCount, _>(s::prekey_count());
    m.add::<DeviceBundle, _>(s::device_bundle());
    m.add::<KeyBundleResponse, _>(s::key_bundle_response());
    m.add::<RecipientEntry, _>(s::recipient_entry());
    m.add::<OutgoingMessage, _>(s::outgoing_message());
    m.add::<SendResponse, _>(s::send_response());
    m.add::<EnvelopeKind, _>(s::envelope_kind());
    m.add::<Envelope, _>(s::envelope());
    m.add::<FetchResponse, _>(s::fetch_response());
    m.add::<FailedRecipient, _>(s::failed_recipient());
    m.add::<DeliveryFailureNotice, _>(s::delivery_failure_notice());
    m.add::<AckRequest, _>(s::ack_request());
    m.add::<AckResponse, _>(s::ack_response());
    m.add::<ServerFrame, _>(s::server_frame());
    m.add::<ClientFrame, _>(s::client_frame());
    m
}

#[test]
fn encoded_wire_values_validate_against_their_schemas() {
    let doc = doc();
    let samples = samples();
    let schemas: BTreeSet<String> = doc["components"]["schemas"]
        .as_object()
        .expect("the document has schemas")
        .keys()
        .cloned()
        .collect();
    let sampled: BTreeSet<String> = samples.by_schema.keys().cloned().collect();
    assert_eq!(
        schemas, sampled,
        "every schema in the document, and only those, has sample values here"
    );
    for (name, values) in &samples.by_schema {
        for value in values {
            check(&doc, &schema_ref(name), value, name)
                .unwrap_or_else(|e| panic!("{e}\nvalue: {value}"));
        }
    }
}

/// Every JSON body of every operation, as a schema.
fn bodies(doc: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let request = operation["requestBody"]["content"]["application/json"]["schema"].clone();
            if !request.is_null() {
                out.push((format!("{method} {path} request"), request));
            }
            for (status, response) in operation["responses"].as_object().expect("responses") {
                let body = &response["content"]["application/json"]["schema"];
                if !body.is_null() {
                    out.push((format!("{method} {path} {status}"), body.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn every_request_and_response_body_names_a_sampled_wire_type() {
    let doc = doc();
    let samples = samples();
    let bodies = bodies(&doc);
    assert!(bodies.len() >= 40, "found only {} bodies", bodies.len());
    for (operation, schema) in bodies {
        let name = schema["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| panic!("{operation}: body is not a named schema: {schema}"));
        let values = samples
            .by_schema
            .get(name)
            .unwrap_or_else(|| panic!("{operation}: no samples of {name}"));
        for value in values {
            check(&doc, &schema, value, &operation)
                .unwrap_or_else(|e| panic!("{e}\nvalue: {value}"));
        }
    }
    let errors = &doc["paths"]["/v1/accounts"]["post"]["responses"]["409"];
    assert_eq!(
        errors["content"]["application/json"]["schema"],
        schema_ref("ErrorBody")
    );
}

/// Asserts serde refuses `bad` as a `T` and the schema of `T` does too.
fn both_refuse<T: ToSchema + DeserializeOwned>(doc: &Value, bad: Value) {
    let name = T::name();
    assert!(
        serde_json::from_value::<T>(bad.clone()).is_err(),
        "serde accepts {bad} as {name}"
    );
    assert!(
        check(doc, &schema_ref(&name), &bad, &name).is_err(),
        "the schema of {name} accepts {bad}"
    );
}

fn sample<T, S: Strategy<Value = T>>(strategy: S) -> Value
where
    T: Serialize,
{
    let mut runner = TestRunner::deterministic();
    let value = strategy.new_tree(&mut runner).expect("a value").current();
    serde_json::to_value(value).expect("encodes")
}

#[test]
fn what_serde_refuses_the_schemas_refuse() {
    let doc = doc();

    let mut unknown_field = sample(s::register_request());
    unknown_field["admin"] = json!(true);
    both_refuse::<RegisterRequest>(&doc, unknown_field);

    let mut missing = sample(s::outgoing_message());
    missing
        .as_object_mut()
        .expect("an object")
        .remove("ttl_secs");
    both_refuse::<OutgoingMessage>(&doc, missing);

    let mut padded = sample(s::device_keys());
    padded["identity_key"] = json!("AA==");
    both_refuse::<DeviceKeys>(&doc, padded);
    let mut standard_alphabet = sample(s::device_keys());
    standard_alphabet["dh_key"] = json!("+/8B");
    both_refuse::<DeviceKeys>(&doc, standard_alphabet);

    let mut upper_hex = sample(s::send_response());
    upper_hex["id"] = json!("AB".repeat(16));
    both_refuse::<SendResponse>(&doc, upper_hex);

    let mut text_seq = sample(s::envelope());
    text_seq["seq"] = json!("7");
    both_refuse::<Envelope>(&doc, text_seq);

    let mut bad_address = sample(s::recipient_entry());
    bad_address["to"] = json!("bob@");
    both_refuse::<RecipientEntry>(&doc, bad_address);

    let mut bad_code = sample(s::api_error());
    bad_code["code"] = json!("no_such_code");
    both_refuse::<ApiError>(&doc, bad_code);

    both_refuse::<ServerFrame>(&doc, json!({"type": "nope", "remaining": 1}));
    both_refuse::<ClientFrame>(&doc, json!({"type": "ack"}));
    both_refuse::<ClientFrame>(&doc, json!({"seqs": [1]}));
    both_refuse::<ClientFrame>(&doc, json!({"type": "ack", "seqs": [1], "extra": 0}));
}

#[test]
fn query_parameters_are_the_query_types_fields() {
    let doc = doc();
    let names = |path: &str| -> BTreeSet<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    let keys = |value: Value| -> BTreeSet<String> {
        value
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect()
    };
    let fetch = FetchQuery {
        after: Some(1),
        limit: Some(2),
    };
    assert_eq!(
        names("/v1/messages"),
        keys(serde_json::to_value(fetch).expect("encodes"))
    );
    let bundle = KeyBundleQuery {
        device: Some(DeviceId(1)),
    };
    assert_eq!(
        names("/v1/keys/{address}"),
        keys(serde_json::to_value(bundle).expect("encodes"))
    );
    assert_eq!(
        names("/v1/links/{code}/status"),
        keys(sample(s::link_status_query()))
    );
}

#[test]
fn schemas_refuse_unknown_fields_exactly_when_serde_does() {
    let doc = doc();
    let samples = samples();
    for (name, values) in &samples.by_schema {
        let decodes = samples.decodes[name];
        for value in values.iter().filter(|v| v.is_object()) {
            let mut extended = value.clone();
            extended["zz_unknown"] = json!(1);
            let serde_accepts = decodes(&extended);
            let schema_accepts = check(&doc, &schema_ref(name), &extended, name).is_ok();
            assert_eq!(
                serde_accepts, schema_accepts,
                "{name} with an unknown field: serde accepts {serde_accepts}, \
                 the schema {schema_accepts}"
            );
        }
    }
}
