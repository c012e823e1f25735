//! Keeps `docs/sts-api.md` and `docs/sts-openapi.yaml` in step with the serde types: the JSON
//! examples of the doc parse into `sts-proto` types (and back, losing nothing), the OpenAPI
//! schemas list exactly the serde fields, and a real request/response round-trips through the
//! server.

use std::collections::{BTreeMap, BTreeSet};

use dubbing_sts_proto::{
    AudioPayload, ErrorInfo, ProcessRequest, ProcessResponse, StageTimings, Status, StsConfig,
};
use dubbing_sts_server::{Faults, LanguagePair, Mode, ServerConfig, Stats, StsServer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

fn read_doc(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/").to_owned() + name;
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The ```json blocks of a markdown text.
fn json_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match &mut current {
            None if line.trim_end() == "```json" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unterminated ```json block");
    blocks
}

/// Parses `value` as `T` and checks that serializing it gives the same JSON back: a field the
/// type does not know (a typo, a renamed field) would otherwise be dropped silently.
fn parse_exact<T: DeserializeOwned + Serialize>(value: &Value, what: &str) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{what} does not parse: {e}\n{value:#}"));
    assert_eq!(
        &serde_json::to_value(&parsed).unwrap(),
        value,
        "{what} does not round-trip (unknown or defaulted fields?)"
    );
    parsed
}

/// The first key of a JSON object as written (`serde_json::Map` sorts its keys).
fn first_key(json: &str) -> Option<&str> {
    let rest = json
        .trim_start()
        .strip_prefix('{')?
        .trim_start()
        .strip_prefix('"')?;
    rest.split('"').next()
}

fn is_uuid_v4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        && parts[2].starts_with('4')
        && matches!(
            parts[3].chars().next(),
            Some('8' | '9' | 'a' | 'b' | 'A' | 'B')
        )
}

/// The payload must be internally consistent: decodable, and `duration_ms` what
/// `AudioPayload::from_pcm` computes for its samples.
fn check_audio(audio: &AudioPayload, what: &str) -> Vec<u8> {
    let pcm = audio
        .decode_pcm()
        .unwrap_or_else(|e| panic!("{what}: audio does not decode: {e}"));
    assert!(!pcm.is_empty(), "{what}: empty audio");
    assert_eq!(
        &AudioPayload::from_pcm(audio.sample_rate_hz, audio.channels, &pcm),
        audio,
        "{what}: duration_ms does not match the samples"
    );
    pcm
}

fn object_keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn doc_examples_parse_into_the_wire_types() {
    let doc = read_doc("sts-api.md");
    let fault_fields = object_keys(&serde_json::to_value(Faults::default()).unwrap());
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    let (mut faults, mut stats, mut health) = (0, 0, 0);
    for (i, block) in json_blocks(&doc).iter().enumerate() {
        let what = format!("docs/sts-api.md json block {}", i + 1);
        let value: Value =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        let Some(first) = first_key(block) else {
            continue;
        };
        match first {
            "fragment_id" if value.get("audio").is_some() => {
                let req: ProcessRequest = parse_exact(&value, &what);
                assert!(
                    is_uuid_v4(&req.fragment_id),
                    "{what}: fragment_id is not a UUID v4"
                );
                check_audio(&req.audio, &what);
                requests.push(req);
            }
            "fragment_id" => {
                let resp: ProcessResponse = parse_exact(&value, &what);
                match resp.status {
                    Status::Success => {
                        assert!(resp.error.is_none(), "{what}");
                        check_audio(resp.dubbed_audio.as_ref().expect("dubbed_audio"), &what);
                    }
                    Status::Error => {
                        assert!(resp.dubbed_audio.is_none(), "{what}");
                        let e = resp.error.as_ref().expect("error object");
                        assert!(!e.code.is_empty() && !e.message.is_empty(), "{what}");
                    }
                }
                responses.push(resp);
            }
            "mode" => {
                let _: Stats = parse_exact(&value, &what);
                stats += 1;
            }
            // `/health` (written with `modes` first: a leading `status` reads as a fault set).
            "modes" => {
                assert_eq!(
                    object_keys(&value),
                    ["engines", "language_pairs", "mode", "modes", "status"]
                        .map(String::from)
                        .into(),
                    "{what}"
                );
                let _: Mode = serde_json::from_value(value["mode"].clone()).unwrap();
                let _: Vec<Mode> = serde_json::from_value(value["modes"].clone()).unwrap();
                let _: Vec<LanguagePair> =
                    serde_json::from_value(value["language_pairs"].clone()).unwrap();
                health += 1;
            }
            key if fault_fields.contains(key) => {
                let f: Faults = serde_json::from_value(value.clone())
                    .unwrap_or_else(|e| panic!("{what}: not a fault set: {e}"));
                f.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
                faults += 1;
            }
            _ => {}
        }
    }
    assert_eq!(requests.len(), 1, "the doc shows one request");
    assert!(responses.iter().any(|r| r.status == Status::Success));
    assert!(
        responses
            .iter()
            .filter(|r| r.status == Status::Error)
            .count()
            >= 3
    );
    assert!(faults >= 1 && stats >= 1 && health >= 1);
    // The error codes of the contract are all documented.
    for code in ["UNSUPPORTED_LANGUAGE", "QUEUE_FULL", "INVALID_INPUT"] {
        assert!(
            doc.contains(&format!("`{code}`")),
            "docs/sts-api.md lacks {code}"
        );
    }
    // A translate-mode success shows the stage timings.
    assert!(responses.iter().any(|r| r.stage_timings_ms.is_some()));
    // The success example is the echo of the request example.
    let req = &requests[0];
    let ok = responses
        .iter()
        .find(|r| r.status == Status::Success)
        .unwrap();
    assert_eq!(ok.fragment_id, req.fragment_id);
    assert_eq!(ok.dubbed_audio.as_ref(), Some(&req.audio));
    // Every fault is documented in the fault table.
    for field in &fault_fields {
        assert!(
            doc.contains(&format!("| `{field}` |")),
            "docs/sts-api.md lacks fault {field}"
        );
    }
}

/// What the OpenAPI file says about one schema.
#[derive(Debug, Default)]
struct Schema {
    properties: BTreeSet<String>,
    required: BTreeSet<String>,
    enumeration: Option<Vec<String>>,
}

fn flow_list(s: &str) -> Vec<String> {
    s.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// `components.schemas` of `docs/sts-openapi.yaml`, read by indentation: the file keeps a
/// block style with one `required: [...]` / `enum: [...]` flow list per schema.
fn openapi_schemas(yaml: &str) -> BTreeMap<String, Schema> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = yaml
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let components = lines
        .iter()
        .position(|l| *l == "components:")
        .expect("components:");
    let start = components
        + 1
        + lines[components + 1..]
            .iter()
            .position(|l| *l == "  schemas:")
            .expect("components.schemas");
    let mut schemas = BTreeMap::new();
    let mut name: Option<String> = None;
    let mut in_properties = false;
    for line in &lines[start + 1..] {
        let (n, text) = (indent(line), line.trim());
        if n < 4 {
            break;
        }
        match n {
            4 => {
                let key = text.strip_suffix(':').expect("a schema name");
                name = Some(key.to_owned());
                schemas.insert(key.to_owned(), Schema::default());
                in_properties = false;
            }
            6 => {
                let s: &mut Schema = schemas.get_mut(name.as_ref().unwrap()).unwrap();
                in_properties = text == "properties:";
                if let Some(list) = text.strip_prefix("required:") {
                    s.required = flow_list(list).into_iter().collect();
                } else if let Some(list) = text.strip_prefix("enum:") {
                    s.enumeration = Some(flow_list(list));
                }
            }
            8 if in_properties => {
                let key = text.split(':').next().unwrap();
                let s = schemas.get_mut(name.as_ref().unwrap()).unwrap();
                s.properties.insert(key.to_owned());
            }
            _ => {}
        }
    }
    schemas
}

/// Property names (every field of a fully populated `full`) and required ones (those whose
/// absence makes deserialization fail) of a serde type.
fn serde_shape<T: DeserializeOwned + Serialize>(full: &T) -> (BTreeSet<String>, BTreeSet<String>) {
    let value = serde_json::to_value(full).unwrap();
    let object: &Map<String, Value> = value.as_object().unwrap();
    let required = object
        .keys()
        .filter(|k| {
            let mut without = object.clone();
            without.remove(*k);
            serde_json::from_value::<T>(Value::Object(without)).is_err()
        })
        .cloned()
        .collect();
    (object.keys().cloned().collect(), required)
}

fn check_schema<T: DeserializeOwned + Serialize>(
    schemas: &BTreeMap<String, Schema>,
    name: &str,
    full: &T,
) {
    let schema = schemas
        .get(name)
        .unwrap_or_else(|| panic!("sts-openapi.yaml has no schema {name}"));
    let (properties, required) = serde_shape(full);
    assert_eq!(schema.properties, properties, "{name}: properties");
    assert_eq!(schema.required, required, "{name}: required");
}

#[test]
fn openapi_schemas_match_the_serde_types() {
    let schemas = openapi_schemas(&read_doc("sts-openapi.yaml"));
    let audio = AudioPayload::from_pcm(48000, 2, &[0; 8]);
    let config = StsConfig {
        source_language: "en".into(),
        target_language: "es".into(),
        voice_profile: "default".into(),
    };
    let error = ErrorInfo {
        code: "GPU_OOM".into(),
        message: "m".into(),
        retryable: Some(true),
    };
    check_schema(&schemas, "AudioPayload", &audio);
    check_schema(&schemas, "StsConfig", &config);
    check_schema(
        &schemas,
        "ProcessRequest",
        &ProcessRequest {
            fragment_id: "f".into(),
            stream_id: "s".into(),
            sequence_number: 1,
            audio: audio.clone(),
            config,
            timeout_ms: 1,
        },
    );
    check_schema(&schemas, "ErrorInfo", &error);
    check_schema(
        &schemas,
        "ProcessResponse",
        &ProcessResponse {
            transcript: Some("t".into()),
            translated_text: Some("t".into()),
            processing_time_ms: Some(1.0),
            stage_timings_ms: Some(StageTimings::default()),
            error: Some(error),
            ..ProcessResponse::success("f", audio)
        },
    );
    check_schema(
        &schemas,
        "Faults",
        &Faults {
            status: Some(503),
            retry_after_s: Some(1),
            error_code: Some("X".into()),
            error_retryable: Some(true),
            wrong_rate: Some(1),
            wrong_channels: Some(1),
            duration_factor: Some(1.0),
            oversize_bytes: Some(1),
            ..Default::default()
        },
    );
    check_schema(&schemas, "Stats", &Stats::default());
    check_schema(&schemas, "StageTimings", &StageTimings::default());
    check_schema(
        &schemas,
        "LanguagePair",
        &LanguagePair {
            source: "en".into(),
            target: "es".into(),
        },
    );

    let variants = |values: &[Value]| -> Option<Vec<String>> {
        Some(
            values
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
        )
    };
    let modes = [Mode::Echo, Mode::Tone, Mode::Silence, Mode::Translate]
        .map(|m| serde_json::to_value(m).unwrap());
    assert_eq!(schemas["Mode"].enumeration, variants(&modes));
    let statuses = [Status::Success, Status::Error].map(|s| serde_json::to_value(s).unwrap());
    assert_eq!(schemas["Status"].enumeration, variants(&statuses));

    // /health has no Rust type of its own: compare with what the server answers.
    let srv = StsServer::start(ServerConfig::default()).unwrap();
    let health: Value = reqwest::blocking::get(format!("{}/health", srv.base_url()))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(schemas["Health"].properties, object_keys(&health));
    assert_eq!(schemas["Health"].required, object_keys(&health));
}

#[test]
fn a_real_request_round_trips_through_serde_and_the_server() {
    let srv = StsServer::start(ServerConfig {
        mode: Mode::Tone,
        api_key: Some("k".into()),
        ..Default::default()
    })
    .unwrap();
    let pcm: Vec<u8> = (0..4800u32 * 2)
        .flat_map(|i| (i as i16).to_le_bytes())
        .collect();
    let req = ProcessRequest {
        fragment_id: "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".into(),
        stream_id: "round-trip".into(),
        sequence_number: 41,
        audio: AudioPayload::from_pcm(48000, 2, &pcm),
        config: StsConfig {
            source_language: "de".into(),
            target_language: "fr".into(),
            voice_profile: "narrator".into(),
        },
        timeout_ms: 1500,
    };
    let body = serde_json::to_string(&req).unwrap();
    let again: ProcessRequest = parse_exact(&serde_json::from_str(&body).unwrap(), "request");
    assert_eq!(again, req);

    let resp = reqwest::blocking::Client::new()
        .post(srv.url())
        .bearer_auth("k")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let raw: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    let answer: ProcessResponse = parse_exact(&raw, "the server's answer");
    assert_eq!(answer.status, Status::Success);
    assert_eq!(answer.fragment_id, req.fragment_id);
    assert!(answer.error.is_none());
    assert_eq!(
        answer.translated_text.as_deref(),
        Some("[fr] tone of fragment 41")
    );
    let audio = answer.dubbed_audio.unwrap();
    assert_eq!(
        (audio.sample_rate_hz, audio.channels, audio.duration_ms),
        (48000, 2, 100)
    );
    assert_eq!(audio.decode_pcm().unwrap().len(), pcm.len());

    let seen = &srv.requests()[0];
    assert_eq!(
        (
            seen.fragment_id.as_str(),
            seen.stream_id.as_str(),
            seen.sequence_number
        ),
        (req.fragment_id.as_str(), "round-trip", Some(41))
    );
    assert_eq!(
        (seen.sample_rate_hz, seen.channels, seen.frames),
        (48000, 2, 4800)
    );
}
