//! The LinuxForHealth connect emulator, driven over HTTP as the Blue Button client drives connect.
//!
//! Expected texts marked "fhir.resources" were recorded from fhir.resources 6.4.0 on pydantic 1.10, the
//! library connect validates with, so they pin the emulator to connect's real answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use connect_sandbox::{validate_fhir, ConnectSandbox, EnvelopeVariant, Options, TlsFiles};
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a socket address")
}

fn fixture(name: &str) -> Value {
    let text = cms_sandbox::fixtures::get(name).unwrap_or_else(|| panic!("no fixture {name}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn entries(bundle: &Value) -> Vec<Value> {
    let entries = bundle["entry"].as_array().expect("a Bundle with entries");
    entries.iter().map(|e| e["resource"].clone()).collect()
}

/// Bulk tests turn slowapi's limit off.
fn unlimited() -> Options {
    Options {
        rate_limit_per_sec: 0,
        ..Options::default()
    }
}

async fn start(opts: Options) -> ConnectSandbox {
    ConnectSandbox::start(loopback(), opts)
        .await
        .expect("the emulator starts")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// connect's `{"detail": "<text>"}`.
    fn detail(&self) -> String {
        match &self.json()["detail"] {
            Value::String(s) => s.clone(),
            other => panic!("detail is not a string: {other}"),
        }
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("the request is answered");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("a readable body");
    Reply {
        status,
        headers,
        text,
    }
}

async fn post(client: &Client, sandbox: &ConnectSandbox, path: &str, body: &Value) -> Reply {
    send(
        client
            .post(format!("{}{path}", sandbox.base_url()))
            .json(body),
    )
    .await
}

async fn post_fhir(client: &Client, sandbox: &ConnectSandbox, body: &Value) -> Reply {
    let rt = body["resourceType"].as_str().expect("a resourceType");
    post(client, sandbox, &format!("/fhir/{rt}"), body).await
}

async fn get(client: &Client, sandbox: &ConnectSandbox, path: &str) -> Reply {
    send(client.get(format!("{}{path}", sandbox.base_url()))).await
}

/// The envelope's `data`: base64 (standard, padded) of the resource's JSON text.
fn decode_data(envelope: &Value) -> (String, Value) {
    let data = envelope["data"].as_str().expect("data is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("standard padded base64");
    let text = String::from_utf8(bytes).expect("UTF-8 JSON");
    let value = serde_json::from_str(&text).expect("data decodes to JSON");
    (text, value)
}

fn location_parts(location: &str) -> (String, u32, u64) {
    let mut it = location.rsplitn(3, ':');
    let offset = it.next().and_then(|o| o.parse().ok()).expect("an offset");
    let partition = it.next().and_then(|p| p.parse().ok()).expect("a partition");
    let topic = it.next().expect("a topic").to_string();
    (topic, partition, offset)
}

fn assert_uuid4(s: &str) {
    let u = uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(u.get_version_num(), 4, "{s}");
}

// ---------------------------------------------------------------------------------------------------
// Validation texts, compared with fhir.resources' own.

/// (type, body, what fhir.resources answers; None when it accepts the body).
const FHIR_RESOURCES_ANSWERS: &[(&str, &str, Option<&str>)] = &[
    ("Patient", r#"{"resourceType":"Patient","foo":1}"#, Some("1 validation error for Patient\nfoo\n  extra fields not permitted (type=value_error.extra)")),
    ("Coverage", r#"{"resourceType":"Coverage"}"#, Some("1 validation error for Coverage\n__root__ -> status\n  field required (type=value_error.missing)")),
    ("Coverage", r#"{"resourceType":"Coverage","status":"active","foo":1,"bar":2}"#, Some("4 validation errors for Coverage\nbeneficiary\n  field required (type=value_error.missing)\npayor\n  field required (type=value_error.missing)\nbar\n  extra fields not permitted (type=value_error.extra)\nfoo\n  extra fields not permitted (type=value_error.extra)")),
    ("Patient", r#"{"resourceType":"Patient","identifier":{"value":"a"}}"#, Some("1 validation error for Patient\nidentifier\n  value is not a valid list (type=type_error.list)")),
    ("Patient", r#"{"resourceType":"Patient","identifier":[null]}"#, Some("1 validation error for Patient\nidentifier -> 0\n  none is not an allowed value (type=type_error.none.not_allowed)")),
    ("Patient", r#"{"resourceType":"Patient","maritalStatus":"M"}"#, Some("1 validation error for Patient\nmaritalStatus -> __root__\n  Invalid json str value has been provided for class <class 'fhir.resources.codeableconcept.CodeableConcept'> (type=value_error)")),
    ("Patient", r#"{"resourceType":"Patient","maritalStatus":5}"#, Some("1 validation error for Patient\nmaritalStatus -> __root__\n  Value is expected from the instance of <class 'fhir.resources.codeableconcept.CodeableConcept'>, but got type <class 'int'> (type=value_error)")),
    ("Patient", r#"{"resourceType":"Patient","gender":{}}"#, Some("1 validation error for Patient\ngender\n  str type expected (type=type_error.str)")),
    ("Patient", r#"{"resourceType":"Patient","gender":"a  b"}"#, Some("1 validation error for Patient\ngender\n  string does not match regex \"^[^\\s]+(\\s[^\\s]+)*$\" (type=value_error.str.regex; pattern=^[^\\s]+(\\s[^\\s]+)*$)")),
    ("Patient", r#"{"resourceType":"Patient","id":"a_b"}"#, Some("1 validation error for Patient\nid\n  string does not match regex \"^[A-Za-z0-9\\-.]+$\" (type=value_error.str.regex; pattern=^[A-Za-z0-9\\-.]+$)")),
    ("Patient", r#"{"resourceType":"Patient","id":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#, Some("1 validation error for Patient\nid\n  ensure this value has at most 64 characters (type=value_error.any_str.max_length; limit_value=64)")),
    ("Patient", r#"{"resourceType":"Patient","id":""}"#, Some("1 validation error for Patient\nid\n  ensure this value has at least 1 characters (type=value_error.any_str.min_length; limit_value=1)")),
    ("Patient", r#"{"resourceType":"Patient","name":[{"family":""}]}"#, Some("1 validation error for Patient\nname -> 0 -> family\n  string does not match regex \"[ \\r\\n\\t\\S]+\" (type=value_error.str.regex; pattern=[ \\r\\n\\t\\S]+)")),
    ("Patient", r#"{"resourceType":"Patient","telecom":[{"value":"1","system":"phone","rank":0}]}"#, Some("1 validation error for Patient\ntelecom -> 0 -> rank\n  ensure this value is greater than 0 (type=value_error.number.not_gt; limit_value=0)")),
    ("Bundle", r#"{"resourceType":"Bundle","type":"searchset","total":-1}"#, Some("1 validation error for Bundle\ntotal\n  ensure this value is greater than or equal to 0 (type=value_error.number.not_ge; limit_value=0)")),
    ("Patient", r#"{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020"}"#, Some("1 validation error for Patient\n__root__\n  Any of one field value is expected from this list ['deceasedBoolean', 'deceasedDateTime'], but got multiple! (type=value_error)")),
    ("Patient", r#"{"resourceType":"Patient","meta":{"lastUpdated":"2020-01-01"}}"#, Some("1 validation error for Patient\nmeta -> lastUpdated\n  invalid datetime format (type=value_error.datetime)")),
    ("Patient", r#"{"resourceType":"Patient","birthDate":"2020-02-30"}"#, Some("1 validation error for Patient\nbirthDate\n  invalid date format (type=value_error.date)")),
    ("Patient", r#"{"resourceType":"Patient","text":{"status":"generated"}}"#, Some("1 validation error for Patient\ntext -> __root__ -> div\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","_gender":{"foo":1}}"#, Some("1 validation error for Patient\n_gender -> __root__ -> extension\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","maritalStatus":{"resourceType":"Coding","text":"a"}}"#, Some("1 validation error for Patient\nmaritalStatus -> resource_type\n  Wrong ResourceType: ``fhir.resources.codeableconcept.CodeableConcept`` expects resource type ``CodeableConcept``, but got ``Coding``. Make sure resource type name is correct and right ModelClass has been chosen. (type=value_error.wrong.resource_type; error=``fhir.resources.codeableconcept.CodeableConcept`` expects resource type ``CodeableConcept``, but got ``Coding``. Make sure resource type name is correct and right ModelClass has been chosen.)")),
    ("Patient", r#"{"resourceType":"Patient","contained":[{"resourceType":"Nope"}]}"#, Some("'fhir.resources.fhirtypes.NopeType' doesnt found.")),
    ("Bundle", r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":5}]}"#, Some("'int' object has no attribute 'get'")),
    ("Coverage", r#"{"resourceType":"Coverage","_status":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},"beneficiary":{"reference":"Patient/1"},"payor":[{"reference":"Organization/1"}]}"#, None),
    ("Coverage", r#"{"resourceType":"Coverage","status":null}"#, Some("1 validation error for Coverage\n__root__ -> status\n  none is not an allowed value (type=type_error.none.not_allowed)")),
    ("Patient", r#"{"resourceType":"Patient","photo":[{"url":"x"}]}"#, Some("1 validation error for Patient\nphoto -> 0 -> url\n  invalid or missing URL scheme (type=value_error.url.scheme)")),
    ("Bundle", r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Patient","foo":1}},{"resource":{"resourceType":"Patient","bar":1}}]}"#, Some("2 validation errors for Bundle\nentry -> 0 -> resource -> foo\n  extra fields not permitted (type=value_error.extra)\nentry -> 1 -> resource -> bar\n  extra fields not permitted (type=value_error.extra)")),
    ("Bundle", r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Patient","active":"maybe","birthDate":"1990-13-01"}}]}"#, Some("2 validation errors for Bundle\nentry -> 0 -> resource -> active\n  value could not be parsed to a boolean (type=type_error.bool)\nentry -> 0 -> resource -> birthDate\n  invalid date format (type=value_error.date)")),
    ("Patient", r#"{"resourceType":"Patient","extension":[{"url":"x","valueString":"x","valueCode":"y"}]}"#, Some("1 validation error for Patient\nextension -> 0 -> __root__\n  Any of one field value is expected from this list ['valueAddress', 'valueAge', 'valueAnnotation', 'valueAttachment', 'valueBase64Binary', 'valueBoolean', 'valueCanonical', 'valueCode', 'valueCodeableConcept', 'valueCoding', 'valueContactDetail', 'valueContactPoint', 'valueContributor', 'valueCount', 'valueDataRequirement', 'valueDate', 'valueDateTime', 'valueDecimal', 'valueDistance', 'valueDosage', 'valueDuration', 'valueExpression', 'valueHumanName', 'valueId', 'valueIdentifier', 'valueInstant', 'valueInteger', 'valueMarkdown', 'valueMeta', 'valueMoney', 'valueOid', 'valueParameterDefinition', 'valuePeriod', 'valuePositiveInt', 'valueQuantity', 'valueRange', 'valueRatio', 'valueReference', 'valueRelatedArtifact', 'valueSampledData', 'valueSignature', 'valueString', 'valueTime', 'valueTiming', 'valueTriggerDefinition', 'valueUnsignedInt', 'valueUri', 'valueUrl', 'valueUsageContext', 'valueUuid'], but got multiple! (type=value_error)")),
    ("Patient", r#"{"resourceType":"Patient","name":[{"given":"a"}]}"#, Some("1 validation error for Patient\nname -> 0 -> given\n  value is not a valid list (type=type_error.list)")),
    ("Patient", r#"{"resourceType":"Patient","name":[{"_given":[null,{"id":"a"}]}]}"#, Some("1 validation error for Patient\nname -> 0 -> _given -> 1 -> __root__ -> extension\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","communication":[{}]}"#, Some("1 validation error for Patient\ncommunication -> 0 -> language\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","link":[{"other":{"reference":"Patient/1"}}]}"#, Some("1 validation error for Patient\nlink -> 0 -> __root__ -> type\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","contained":[{"id":"x","name":"y"}]}"#, Some("1 validation error for Patient\ncontained -> 0 -> name\n  extra fields not permitted (type=value_error.extra)")),
    ("ExplanationOfBenefit", r#"{"resourceType":"ExplanationOfBenefit","status":"active","use":"claim","outcome":"complete","created":"2020-01-01","type":{},"patient":{},"insurer":{},"provider":{},"insurance":[{"focal":true,"coverage":{}}],"supportingInfo":[{"sequence":1}]}"#, Some("1 validation error for ExplanationOfBenefit\nsupportingInfo -> 0 -> category\n  field required (type=value_error.missing)")),
    ("ExplanationOfBenefit", r#"{"resourceType":"ExplanationOfBenefit","status":"active","use":"claim","outcome":"complete","created":"2020-01-01","type":{},"patient":{},"insurer":{},"provider":{},"insurance":[{"focal":true,"coverage":{}}],"item":[{"sequence":1,"productOrService":{},"servicedDate":"2020","servicedPeriod":{}}]}"#, Some("1 validation error for ExplanationOfBenefit\nitem -> 0 -> __root__\n  Any of one field value is expected from this list ['servicedDate', 'servicedPeriod'], but got multiple! (type=value_error)")),
    ("Coverage", r#"{"resourceType":"Coverage","status":"active","beneficiary":{},"payor":[{}],"costToBeneficiary":[{}]}"#, Some("1 validation error for Coverage\ncostToBeneficiary -> 0 -> __root__\n  Expect any of field value from this list ['valueMoney', 'valueQuantity']. (type=value_error)")),
    ("ExplanationOfBenefit", r#"{"resourceType":"ExplanationOfBenefit","status":"active","use":"claim","outcome":"complete","created":"2020-01-01","type":{},"patient":{},"insurer":{},"provider":{},"insurance":[{"focal":true,"coverage":{}}],"diagnosis":[{}]}"#, Some("1 validation error for ExplanationOfBenefit\ndiagnosis -> 0 -> __root__ -> sequence\n  field required (type=value_error.missing)")),
    ("Patient", r#"{"resourceType":"Patient","meta":{"profile":[null]}}"#, Some("1 validation error for Patient\nmeta -> profile -> 0\n  none is not an allowed value (type=type_error.none.not_allowed)")),
    ("Patient", r#"{"resourceType":"Patient","maritalStatus":"2020"}"#, Some("1 validation error for Patient\nmaritalStatus -> __root__\n  CodeableConcept expected dict not int (type=type_error)")),
    ("Patient", r#"{"resourceType":"Patient","name":[{"given":["a",null],"_given":[null,{"extension":[{"url":"u","valueString":"x"}]}]}]}"#, None),
    ("Bundle", r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":["x"]}}]}"#, Some("1 validation error for Bundle\nentry -> 0 -> resource\n  can only concatenate list (not \"str\") to list (type=type_error)")),
    ("Organization", r#"{"resourceType":"Organization","name":"x","foo":1}"#, Some("1 validation error for Organization\nfoo\n  extra fields not permitted (type=value_error.extra)")),
    ("Organization", r#"{"resourceType":"Organization","contact":[{"purpose":{"text":"x"},"nmae":"y"}]}"#, Some("1 validation error for Organization\ncontact -> 0 -> nmae\n  extra fields not permitted (type=value_error.extra)")),
    ("Organization", r#"{"resourceType":"Organization","alias":"x"}"#, Some("1 validation error for Organization\nalias\n  value is not a valid list (type=type_error.list)")),
];

#[test]
fn validation_texts_match_fhir_resources() {
    for (rt, body, want) in FHIR_RESOURCES_ANSWERS {
        let body: Value = serde_json::from_str(body).expect("case bodies are JSON");
        let got = validate_fhir(rt, &body).err();
        assert_eq!(got.as_deref(), *want, "{rt} {body}");
    }
}

/// FHIR's JSON format fixes each primitive's JSON type and grammar; pydantic coerces and accepts
/// these, the emulator rejects them so that a client sending them is caught.
#[test]
fn validation_is_stricter_than_pydantic_on_primitive_json_types() {
    let cases = [
        (json!({"resourceType": "Patient", "gender": 5}), "gender\n  str type expected (type=type_error.str)"),
        (
            json!({"resourceType": "Patient", "active": "true"}),
            "active\n  value could not be parsed to a boolean (type=type_error.bool)",
        ),
        (
            json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
            "multipleBirthInteger\n  value is not a valid integer (type=type_error.integer)",
        ),
        (
            json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T10:00:00"}),
            "deceasedDateTime\n  invalid datetime format (type=value_error.datetime)",
        ),
        (json!({"resourceType": "Patient", "birthDate": "20201"}), "birthDate\n  invalid date format (type=value_error.date)"),
        (
            json!({"resourceType": "Coverage", "status": "active", "beneficiary": {}, "payor": [{}],
                   "costToBeneficiary": [{"valueMoney": {"value": "12.5"}}]}),
            "costToBeneficiary -> 0 -> valueMoney -> value\n  value is not a valid decimal (type=type_error.decimal)",
        ),
    ];
    for (body, want) in cases {
        let rt = body["resourceType"].as_str().expect("a type");
        let got = validate_fhir(rt, &body).expect_err("rejected");
        assert_eq!(
            got,
            format!("1 validation error for {rt}\n{want}"),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Status codes of POST /fhir/{type}.

#[tokio::test]
async fn unknown_types_are_404_case_sensitively() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    for rt in ["encounter", "Foo", "PATIENT"] {
        let reply = post(
            &client,
            &sandbox,
            &format!("/fhir/{rt}"),
            &json!({"resourceType": rt}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{rt}");
        assert_eq!(reply.json(), json!({"detail": format!("/{rt} not found")}));
    }
    // A real type the emulator does not model element by element is still taken.
    let encounter =
        json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}});
    assert_eq!(
        post_fhir(&client, &sandbox, &encounter).await.status,
        StatusCode::OK
    );
    // fhir.resources' MODEL_CLASSES, which connect checks, also names data types.
    let concept = json!({"resourceType": "CodeableConcept", "text": "x"});
    assert_eq!(
        post_fhir(&client, &sandbox, &concept).await.status,
        StatusCode::OK
    );
    let bad_concept = json!({"resourceType": "CodeableConcept", "txt": "x"});
    assert_eq!(
        post_fhir(&client, &sandbox, &bad_concept).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(sandbox.stats().records, 2);
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_fastapis_422() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let url = format!("{}/fhir/Patient", sandbox.base_url());
    let raw = |body: &'static str, ct: &'static str| {
        client.post(&url).header("content-type", ct).body(body)
    };

    let reply = send(raw("[1, 2]", "application/json")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.json(),
        json!({"detail": [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]})
    );

    let reply = send(raw("null", "application/json")).await;
    assert_eq!(
        reply.json(),
        json!({"detail": [{"loc": ["body"], "msg": "none is not an allowed value", "type": "type_error.none.not_allowed"}]})
    );

    let reply = send(client.post(&url)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.json(),
        json!({"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]})
    );

    // A JSON object sent as text/plain stays bytes for FastAPI, which are not a dict.
    let reply = send(raw(r#"{"resourceType":"Patient"}"#, "text/plain")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.json()["detail"][0]["type"], "type_error.dict");

    let reply = send(raw("not json", "application/json")).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let item = &reply.json()["detail"][0];
    assert_eq!(item["loc"], json!(["body", 0]));
    assert_eq!(item["msg"], "Expecting value: line 1 column 1 (char 0)");
    assert_eq!(item["type"], "value_error.jsondecode");
    assert_eq!(item["ctx"]["doc"], "not json");

    // FastAPI validates the body before connect's handler looks at the path.
    let reply = send(
        client
            .post(format!("{}/fhir/Foo", sandbox.base_url()))
            .json(&json!([])),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(sandbox.stats().workflow_runs, 0);
}

#[tokio::test]
async fn a_resource_type_other_than_the_paths_is_422() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    for (body, named) in [
        (json!({"id": "1"}), "None"),
        (json!({"resourceType": "Coverage"}), "Coverage"),
        (json!({"resourceType": "patient"}), "patient"),
        (json!({"resourceType": 5}), "5"),
    ] {
        let reply = post(&client, &sandbox, "/fhir/Patient", &body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            reply.detail(),
            format!("resource type {named} in request does not match url /Patient")
        );
    }
}

#[tokio::test]
async fn invalid_fhir_is_500_with_the_validation_text() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let reply = post_fhir(
        &client,
        &sandbox,
        &json!({"resourceType": "Patient", "foo": 1}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.detail(), "1 validation error for Patient\nfoo\n  extra fields not permitted (type=value_error.extra)");

    // An exception fhir.resources does not turn into a ValidationError comes through bare.
    let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Nope"}}]});
    let reply = post_fhir(&client, &sandbox, &bundle).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.detail(),
        "'fhir.resources.fhirtypes.NopeType' doesnt found."
    );
    assert_eq!(sandbox.stats().records, 0);
}

// ---------------------------------------------------------------------------------------------------
// The C4DIC digital insurance card (Blue Button v3): a Bundle of Patient, Coverage and Organization.

/// The card's payer, as the app delivers it.
fn c4dic_organization() -> Value {
    json!({
        "resourceType": "Organization",
        "id": "c4dic-payer",
        "active": true,
        "name": "Centers for Medicare and Medicaid Services",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.4.927"}],
        "telecom": [{"system": "phone", "value": "1-800-633-4227"}],
        "meta": {"profile": ["http://hl7.org/fhir/us/insurance-card/StructureDefinition/C4DIC-Organization"]}
    })
}

fn c4dic_bundle(organization: Value) -> Value {
    let patient = json!({"resourceType": "Patient", "id": "-20140000010000"});
    let coverage = json!({
        "resourceType": "Coverage",
        "id": "c4dic-part-a",
        "status": "active",
        "beneficiary": {"reference": "Patient/-20140000010000"},
        "payor": [{"reference": "Organization/c4dic-payer"}]
    });
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": patient}, {"resource": coverage}, {"resource": organization}]
    })
}

/// Connect validates Organization with fhir.resources like any other type: the card's payer is taken
/// alone and in the card's Bundle, and stored in FHIR's element order; an unknown element is refused.
#[tokio::test]
async fn the_digital_insurance_cards_organization_is_validated_like_any_resource() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    // fhir.resources: json.dumps(construct_fhir_element("Organization", org).dict()).
    let stored = r#"{"resourceType": "Organization", "id": "c4dic-payer", "meta": {"profile": ["http://hl7.org/fhir/us/insurance-card/StructureDefinition/C4DIC-Organization"]}, "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.840.1.113883.4.927"}], "active": true, "name": "Centers for Medicare and Medicaid Services", "telecom": [{"system": "phone", "value": "1-800-633-4227"}]}"#;

    let reply = post(
        &client,
        &sandbox,
        "/fhir/Organization",
        &c4dic_organization(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let env = reply.json();
    assert_eq!(env["consuming_endpoint_url"], "/fhir/Organization");
    let (text, resource) = decode_data(&env);
    assert_eq!(resource, c4dic_organization());
    assert_eq!(text, stored);

    let reply = post(
        &client,
        &sandbox,
        "/fhir/Bundle",
        &c4dic_bundle(c4dic_organization()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let (text, resource) = decode_data(&reply.json());
    assert_eq!(resource, c4dic_bundle(c4dic_organization()));
    assert!(text.contains(stored), "{text}");
    assert_eq!(sandbox.stats().records, 2);

    let mut unknown = c4dic_organization();
    unknown["payerKind"] = json!("medicare");
    let reply = post(&client, &sandbox, "/fhir/Organization", &unknown).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.detail(),
        "1 validation error for Organization\npayerKind\n  extra fields not permitted (type=value_error.extra)"
    );
    let reply = post(&client, &sandbox, "/fhir/Bundle", &c4dic_bundle(unknown)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.detail(),
        "1 validation error for Bundle\nentry -> 2 -> resource -> payerKind\n  extra fields not permitted (type=value_error.extra)"
    );
    assert_eq!(sandbox.stats().records, 2);
}

// ---------------------------------------------------------------------------------------------------
// The envelope.

const ENVELOPE_FIELDS: [&str; 17] = [
    "uuid",
    "lfh_id",
    "operation",
    "creation_date",
    "store_date",
    "consuming_endpoint_url",
    "data",
    "data_format",
    "status",
    "data_record_location",
    "target_endpoint_urls",
    "ipfs_uri",
    "elapsed_storage_time",
    "transmit_date",
    "elapsed_transmit_time",
    "elapsed_total_time",
    "transmission_attributes",
];

/// The fields in `LinuxForHealthDataRecordResponse`'s order, and nothing else.
fn assert_envelope_shape(text: &str) {
    let value: Value = serde_json::from_str(text).expect("JSON");
    let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
    assert_eq!(keys.len(), ENVELOPE_FIELDS.len(), "{keys:?}");
    let positions: Vec<usize> = ENVELOPE_FIELDS
        .iter()
        .map(|f| {
            text.find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} missing from {text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "field order {positions:?}"
    );
}

fn assert_connect_date(s: &str) {
    let ok = s.len() == 25
        && s.ends_with("+00:00")
        && time::PrimitiveDateTime::parse(
            &s[..19],
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .is_ok();
    assert!(ok, "not a whole-second UTC isoformat: {s}");
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    let age = time::OffsetDateTime::now_utc() - t;
    assert!(
        age >= time::Duration::seconds(-1) && age < time::Duration::seconds(60),
        "{s} is not now"
    );
}

#[tokio::test]
async fn the_2022_envelope_has_every_field() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let patient = fixture("site_patient_bbuser29999.json");
    let req = client
        .post(format!("{}/fhir/Patient", sandbox.base_url()))
        .header("authorization", "Bearer secret")
        .header("x-api-token", "t")
        .header("x-db-password", "p")
        .header("x-pwd", "p")
        .header("x-request-id", "req-1")
        .json(&patient);
    let reply = send(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_envelope_shape(&reply.text);
    let env = reply.json();
    assert_uuid4(env["uuid"].as_str().expect("uuid"));
    let lfh_id = env["lfh_id"].as_str().expect("lfh_id");
    assert!(
        lfh_id.len() == 12 && lfh_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{lfh_id}"
    );
    assert_eq!(env["operation"], "POST");
    assert_connect_date(env["creation_date"].as_str().expect("creation_date"));
    assert_eq!(env["store_date"], env["creation_date"]);
    assert_eq!(env["consuming_endpoint_url"], "/fhir/Patient");
    assert_eq!(env["data_format"], "FHIR-R4");
    assert_eq!(env["status"], "success");
    assert_eq!(env["data_record_location"], "FHIR-R4:0:0");
    assert_eq!(env["target_endpoint_urls"], json!([]));
    let ipfs = env["ipfs_uri"].as_str().expect("ipfs_uri");
    assert!(ipfs.starts_with("/ipfs/Qm") && ipfs.len() == 52, "{ipfs}");
    assert!(env["elapsed_storage_time"]
        .as_f64()
        .is_some_and(|t| t >= 0.0));
    assert!(env["elapsed_total_time"]
        .as_f64()
        .is_some_and(|t| t >= env["elapsed_storage_time"].as_f64().unwrap_or(0.0)));
    assert_eq!(env["transmit_date"], Value::Null);
    assert_eq!(env["elapsed_transmit_time"], Value::Null);
    let attrs = env["transmission_attributes"]
        .as_object()
        .expect("an object in the 2022 envelope");
    assert_eq!(attrs["x-request-id"], "req-1");
    assert_eq!(attrs["content-type"], "application/json");
    for scrubbed in ["authorization", "x-api-token", "x-db-password", "x-pwd"] {
        assert!(
            !attrs.contains_key(scrubbed),
            "{scrubbed} leaked: {attrs:?}"
        );
    }

    let (text, resource) = decode_data(&env);
    assert_eq!(resource, patient, "the stored resource is the posted one");
    // Re-serialised like json.dumps: Python's separators, resourceType then FHIR's element order.
    assert!(
        text.starts_with(r#"{"resourceType": "Patient", "id": "-20140000010000", "meta": {"#),
        "{}",
        &text[..80]
    );
    assert!(!text.contains("\",\""));
}

#[tokio::test]
async fn the_2021_envelope_names_topics_by_type_and_encodes_the_attributes() {
    let sandbox = start(Options {
        envelope_variant: EnvelopeVariant::V2021,
        ..unlimited()
    })
    .await;
    let client = Client::new();
    let patient = fixture("site_patient_bbuser29999.json");
    let coverage = fixture("site_coverage_bundle_bbuser29999.json");
    let mut locations = Vec::new();
    for (body, format) in [
        (&patient, "FHIR-R4_PATIENT"),
        (&coverage, "FHIR-R4_BUNDLE"),
        (&patient, "FHIR-R4_PATIENT"),
    ] {
        let req = client
            .post(format!(
                "{}/fhir/{}",
                sandbox.base_url(),
                body["resourceType"].as_str().unwrap_or_default()
            ))
            .header("authorization", "Bearer secret")
            .header("x-request-id", "req-2")
            .json(body);
        let reply = send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_envelope_shape(&reply.text);
        let env = reply.json();
        assert_eq!(env["data_format"], format);
        let attrs = env["transmission_attributes"]
            .as_str()
            .expect("a base64 string in the 2021 envelope");
        let attrs = base64::engine::general_purpose::STANDARD
            .decode(attrs)
            .expect("base64");
        let attrs: Value = serde_json::from_slice(&attrs).expect("JSON inside");
        assert_eq!(attrs["x-request-id"], "req-2");
        assert!(attrs.get("authorization").is_none());
        assert_eq!(&decode_data(&env).1, body);
        locations.push(
            env["data_record_location"]
                .as_str()
                .expect("a location")
                .to_string(),
        );
    }
    assert_eq!(
        locations,
        [
            "FHIR-R4_PATIENT:0:0",
            "FHIR-R4_BUNDLE:0:0",
            "FHIR-R4_PATIENT:0:1"
        ]
    );
}

#[tokio::test]
async fn every_post_is_a_new_record_at_the_next_offset() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let patient = fixture("site_patient_bbuser29999.json");
    let mut uuids = Vec::new();
    for expected in 0..3u64 {
        let env = post_fhir(&client, &sandbox, &patient).await.json();
        assert_eq!(
            location_parts(env["data_record_location"].as_str().expect("location")),
            ("FHIR-R4".into(), 0, expected)
        );
        uuids.push(env["uuid"].as_str().expect("uuid").to_string());
    }
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3, "no de-duplication: three records");
    let records = sandbox.records();
    assert_eq!(
        records.iter().map(|r| r.location()).collect::<Vec<_>>(),
        ["FHIR-R4:0:0", "FHIR-R4:0:1", "FHIR-R4:0:2"]
    );
    assert!(records.iter().all(|r| r.resource == patient));
}

// ---------------------------------------------------------------------------------------------------
// Reading back.

#[tokio::test]
async fn what_was_posted_reads_back_through_data() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let posted = [
        fixture("site_patient_bbuser29999.json"),
        fixture("site_coverage_bundle_bbuser29999.json"),
    ];
    let mut answered = Vec::new();
    for body in &posted {
        answered.push(post_fhir(&client, &sandbox, body).await.json());
    }
    let listing = get(&client, &sandbox, "/_emulator/records").await.json();
    let records = listing["records"].as_array().expect("records");
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["resourceType"], "Bundle");
    assert_eq!(records[1]["id"], posted[1]["id"]);
    let ids: Vec<&str> = records[1]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        ids,
        [
            "Coverage/part-a--20140000010000",
            "Coverage/part-b--20140000010000",
            "Coverage/part-c--20140000010000",
            "Coverage/part-d--20140000010000"
        ]
    );
    assert!(
        records.iter().all(|r| r.get("data").is_none()),
        "the listing carries no data"
    );

    for ((record, body), env) in records.iter().zip(&posted).zip(&answered) {
        let path = format!(
            "/data?dataformat={}&partition={}&offset={}",
            record["topic"].as_str().expect("topic"),
            record["partition"],
            record["offset"]
        );
        let reply = get(&client, &sandbox, &path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        assert_envelope_shape(&reply.text);
        let stored = reply.json();
        assert_eq!(stored["uuid"], env["uuid"]);
        assert_eq!(stored["data"], env["data"]);
        assert_eq!(&decode_data(&stored).1, body);
        // What was produced to Kafka predates the delivery report, as in connect.
        for field in [
            "status",
            "data_record_location",
            "elapsed_storage_time",
            "elapsed_total_time",
        ] {
            assert_eq!(stored[field], Value::Null, "{field}");
        }
        assert_eq!(record["location"], env["data_record_location"]);
    }
}

#[tokio::test]
async fn data_answers_422_400_and_404_for_bad_or_absent_records() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    post_fhir(&client, &sandbox, &fixture("site_patient_bbuser29999.json")).await;
    let reply = get(&client, &sandbox, "/data?dataformat=FHIR-R4&partition=x").await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        reply.json(),
        json!({"detail": [
            {"loc": ["query", "partition"], "msg": "value is not a valid integer", "type": "type_error.integer"},
            {"loc": ["query", "offset"], "msg": "field required", "type": "value_error.missing"}
        ]})
    );
    for bad in [
        "/data?dataformat=FHIR-R4&partition=0&offset=-1",
        "/data?dataformat=FHIR%20R4&partition=0&offset=0",
    ] {
        assert_eq!(
            get(&client, &sandbox, bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    for absent in [
        "/data?dataformat=FHIR-R4&partition=0&offset=1",
        "/data?dataformat=FHIR-R4&partition=1&offset=0",
        "/data?dataformat=FHIR-R4_PATIENT&partition=0&offset=0",
    ] {
        let reply = get(&client, &sandbox, absent).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{absent}");
        assert!(
            reply.detail().starts_with("No message was found"),
            "{}",
            reply.text
        );
    }
    assert_eq!(
        get(
            &client,
            &sandbox,
            "/data?dataformat=FHIR-R4&partition=0&offset=0"
        )
        .await
        .status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------------
// Agreement with connect on the CMS fixtures.

/// The locs of the R4 elements this EOB lacks, read from its JSON: R4 makes `provider` and each
/// `item.productOrService` 1..1. Listed in pydantic's field order (`item` before `provider`).
fn missing_eob_elements(eob: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    for (i, item) in eob["item"].as_array().into_iter().flatten().enumerate() {
        if item.get("productOrService").is_none() {
            missing.push(format!("item -> {i} -> productOrService"));
        }
    }
    if eob.get("provider").is_none() {
        missing.push("provider".to_string());
    }
    missing
}

fn missing_fields_text(model: &str, locs: &[String]) -> String {
    let n = locs.len();
    let mut text = format!(
        "{n} validation error{} for {model}",
        if n == 1 { "" } else { "s" }
    );
    for loc in locs {
        text.push_str(&format!(
            "\n{loc}\n  field required (type=value_error.missing)"
        ));
    }
    text
}

const SDK_PAGES: [&str; 6] = [
    "sdk_eob_search_page0.min.json",
    "sdk_eob_search_page1.min.json",
    "sdk_eob_search_page2.min.json",
    "sdk_eob_search_page3.min.json",
    "sdk_eob_search_page4.min.json",
    "sdk_eob_search_page5.min.json",
];

#[tokio::test]
async fn the_fixtures_are_accepted_and_rejected_as_connect_does() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let mut accepted = 0;

    // Real sandbox EOBs: every one lacks an element R4 requires, so connect rejects each of them.
    let mut rejected = Vec::new();
    for page in SDK_PAGES {
        let bundle = fixture(page);
        let mut bundle_locs = Vec::new();
        for (k, eob) in entries(&bundle).iter().enumerate() {
            let id = eob["id"].as_str().expect("an id").to_string();
            let missing = missing_eob_elements(eob);
            assert!(!missing.is_empty(), "{page} {id} lacks nothing R4 requires");
            if id.starts_with("carrier-") {
                assert_eq!(missing, ["provider"], "{id}");
            } else {
                assert!(
                    id.starts_with("outpatient-")
                        && missing.iter().all(|m| m.ends_with("productOrService")),
                    "{id}"
                );
            }
            let reply = post(&client, &sandbox, "/fhir/ExplanationOfBenefit", eob).await;
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{id}");
            assert_eq!(
                reply.detail(),
                missing_fields_text("ExplanationOfBenefit", &missing),
                "{id}"
            );
            bundle_locs.extend(
                missing
                    .iter()
                    .map(|m| format!("entry -> {k} -> resource -> {m}")),
            );
            rejected.push(id);
        }
        let reply = post(&client, &sandbox, "/fhir/Bundle", &bundle).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{page}");
        assert_eq!(
            reply.detail(),
            missing_fields_text("Bundle", &bundle_locs),
            "{page}"
        );
    }
    assert_eq!(rejected.len(), 52, "the search's total");
    assert_eq!(
        rejected
            .iter()
            .filter(|id| id.starts_with("carrier-"))
            .count(),
        14
    );

    // The official BBUser29999 sample (Part D events) is valid R4: each EOB and the whole page pass.
    let pde = fixture("site_eob_bundle_bbuser29999.json");
    for eob in entries(&pde) {
        assert!(missing_eob_elements(&eob).is_empty());
        let reply = post(&client, &sandbox, "/fhir/ExplanationOfBenefit", &eob).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: {}",
            eob["id"],
            reply.text
        );
        accepted += 1;
    }
    let reply = post(&client, &sandbox, "/fhir/Bundle", &pde).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(decode_data(&reply.json()).1, pde);
    accepted += 1;

    // One invalid entry fails the whole Bundle, and only that entry is reported.
    let mut mixed = pde.clone();
    let carrier = entries(&fixture(SDK_PAGES[0]))[0].clone();
    mixed["entry"] = json!([{"resource": entries(&pde)[0]}, {"resource": carrier}]);
    let reply = post(&client, &sandbox, "/fhir/Bundle", &mixed).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.detail(),
        missing_fields_text(
            "Bundle",
            &["entry -> 1 -> resource -> provider".to_string()]
        )
    );

    // The other valid fixtures.
    let coverage = fixture("site_coverage_bundle_bbuser29999.json");
    for body in entries(&coverage).iter().chain([
        &fixture("site_patient_bbuser29999.json"),
        &coverage,
        &fixture("webserver_patient_search_v2.json"),
        &fixture("webserver_resource_error_response.json"),
        &fixture("openapi_v2_fhir_metadata.json"),
    ]) {
        let reply = post_fhir(&client, &sandbox, body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: {}",
            body["resourceType"],
            reply.text
        );
        accepted += 1;
    }

    // BB2's unit-test carrier EOB lacks `outcome` (1..1); pydantic stops at that required primitive
    // before it would report the also missing provider, insurer and insurance.focal.
    let carrier = fixture("webserver_eob_read_carrier_v2.json");
    assert!(carrier.get("outcome").is_none() && carrier.get("provider").is_none());
    let reply = post_fhir(&client, &sandbox, &carrier).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.detail(),
        "1 validation error for ExplanationOfBenefit\n__root__ -> outcome\n  field required (type=value_error.missing)"
    );
    let mut with_outcome = carrier.clone();
    with_outcome["outcome"] = json!("complete");
    assert_eq!(
        validate_fhir("ExplanationOfBenefit", &with_outcome).expect_err("still invalid"),
        "3 validation errors for ExplanationOfBenefit\ninsurance -> 0 -> __root__ -> focal\n  field required \
         (type=value_error.missing)\ninsurer\n  field required (type=value_error.missing)\nprovider\n  field required \
         (type=value_error.missing)"
    );

    let stats = sandbox.stats();
    assert_eq!(stats.records, accepted);
    assert_eq!(stats.by_status.get(&200).copied(), Some(accepted as u64));
    assert_eq!(stats.by_status.get(&500).copied(), Some(52 + 6 + 1 + 1));
}

// ---------------------------------------------------------------------------------------------------
// Failures of the workflow.

/// The BBUser29999 EOBs, repeated until the Bundle's compact JSON reaches `bytes`.
fn eob_bundle_of(bytes: usize) -> Value {
    let pde = fixture("site_eob_bundle_bbuser29999.json");
    let pool = pde["entry"].as_array().expect("entries").clone();
    let mut bundle = pde.clone();
    bundle["entry"] = json!([]);
    // Compact JSON: the empty Bundle, plus each entry and its comma.
    let mut size = serde_json::to_vec(&bundle).expect("JSON").len() - 1;
    let mut list = Vec::new();
    while size < bytes {
        let entry = &pool[list.len() % pool.len()];
        size += serde_json::to_vec(entry).expect("JSON").len() + 1;
        list.push(entry.clone());
    }
    bundle["entry"] = Value::Array(list);
    bundle
}

fn lfh_error(reply: &Reply) -> Value {
    let detail = reply.detail();
    let error: Value = serde_json::from_str(&detail)
        .unwrap_or_else(|e| panic!("detail is not LFHError JSON ({e}): {detail}"));
    let keys: Vec<&String> = error.as_object().expect("an object").keys().collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_uuid4(error["uuid"].as_str().expect("uuid"));
    let date = error["error_date"].as_str().expect("error_date");
    assert!(
        time::PrimitiveDateTime::parse(
            date,
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]")
        )
        .is_ok(),
        "{date}"
    );
    assert!(
        detail.starts_with(r#"{"data": {"resourceType": "#),
        "Python's separators, LFHError's field order"
    );
    error
}

#[tokio::test]
async fn a_message_over_kafkas_limit_fails_with_an_lfherror() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let small = eob_bundle_of(600_000);
    let size = serde_json::to_vec(&small).expect("JSON").len();
    assert!((600_000..650_000).contains(&size), "{size}");
    let reply = post_fhir(&client, &sandbox, &small).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a ~600 KB Bundle is ~840 KB of base64"
    );
    assert_eq!(reply.json()["data_record_location"], "FHIR-R4:0:0");

    let big = eob_bundle_of(900_000);
    let reply = post_fhir(&client, &sandbox, &big).await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a ~900 KB Bundle is ~1.26 MB of base64"
    );
    let error = lfh_error(&reply);
    assert!(
        error["error_msg"]
            .as_str()
            .is_some_and(|m| m.contains("MSG_SIZE_TOO_LARGE")),
        "{}",
        error["error_msg"]
    );
    assert_eq!(error["data"], big);
    assert_eq!(error["data_record_location"], "LFH_EXCEPTION:0:0");
    assert_eq!(
        sandbox.records().len(),
        1,
        "nothing stored for the failed POST"
    );
    assert_eq!(sandbox.errors().len(), 1);
    let stored = get(
        &client,
        &sandbox,
        "/data?dataformat=LFH_EXCEPTION&partition=0&offset=0",
    )
    .await
    .json();
    assert_eq!(stored["uuid"], error["uuid"]);

    // Far above Kafka's limit is the same failure, not an HTTP body limit: uvicorn takes any size.
    let huge = eob_bundle_of(2_500_000);
    let reply = post_fhir(&client, &sandbox, &huge).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(lfh_error(&reply)["error_msg"]
        .as_str()
        .is_some_and(|m| m.contains("MSG_SIZE_TOO_LARGE")));

    // The limit is the envelope's size, and configurable.
    let strict = start(Options {
        max_message_bytes: 4_000,
        ..unlimited()
    })
    .await;
    let patient = fixture("site_patient_bbuser29999.json");
    assert_eq!(
        post_fhir(&client, &strict, &patient).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let small_patient = json!({"resourceType": "Patient", "id": "1"});
    assert_eq!(
        post_fhir(&client, &strict, &small_patient).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn fail_first_answers_500_until_kafka_is_back() {
    let sandbox = start(Options {
        fail_first: 2,
        ..unlimited()
    })
    .await;
    let client = Client::new();
    let patient = fixture("site_patient_bbuser29999.json");
    assert_eq!(
        get(&client, &sandbox, "/status").await.json()["kafka_broker_status"],
        "UNAVAILABLE"
    );
    // Requests rejected before the workflow do not use up the outage.
    let invalid = json!({"resourceType": "Patient", "foo": 1});
    assert_eq!(
        post_fhir(&client, &sandbox, &invalid).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    for n in 0..2 {
        let reply = post_fhir(&client, &sandbox, &patient).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        let error = lfh_error(&reply);
        assert!(
            error["error_msg"]
                .as_str()
                .is_some_and(|m| m.contains("_MSG_TIMED_OUT")),
            "{}",
            error["error_msg"]
        );
        assert_eq!(
            error["data_record_location"],
            format!("LFH_EXCEPTION:0:{n}")
        );
        assert_eq!(error["data"], patient);
    }
    assert_eq!(
        get(&client, &sandbox, "/status").await.json()["kafka_broker_status"],
        "AVAILABLE"
    );
    let reply = post_fhir(&client, &sandbox, &patient).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["data_record_location"], "FHIR-R4:0:0");
    assert_eq!(sandbox.stats().workflow_runs, 3);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_per_route() {
    let sandbox = start(Options {
        rate_limit_per_sec: 3,
        ..Options::default()
    })
    .await;
    let client = Client::new();
    let started = Instant::now();
    let replies =
        futures::future::join_all((0..10).map(|_| get(&client, &sandbox, "/status"))).await;
    let elapsed = started.elapsed();
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 10);
    // Three per one-second window; a slow machine may see a second window.
    assert!(
        (3..=3 * (elapsed.as_secs() as usize + 1)).contains(&ok),
        "{ok} passed in {elapsed:?}"
    );
    let first = limited.first().expect("some requests were limited");
    assert_eq!(
        first.json(),
        json!({"error": "Rate limit exceeded: 3 per 1 second"})
    );
    let retry: u64 = first.headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert_eq!(retry, 1);

    // Each route has its own window, and the emulator's own endpoints are never limited.
    let patient = json!({"resourceType": "Patient", "id": "1"});
    assert_eq!(
        post_fhir(&client, &sandbox, &patient).await.status,
        StatusCode::OK
    );
    for _ in 0..5 {
        assert_eq!(
            get(&client, &sandbox, "/_emulator/stats").await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&client, &sandbox, "/status").await.status,
        StatusCode::OK,
        "a new window"
    );

    // Off: a burst all passes.
    let open = start(unlimited()).await;
    let replies = futures::future::join_all((0..40).map(|_| get(&client, &open, "/status"))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
}

#[tokio::test]
async fn some_200s_carry_a_null_location_but_the_record_is_stored() {
    let client = Client::new();
    let patient = json!({"resourceType": "Patient", "id": "1"});
    let always = start(Options {
        null_location_rate: 1.0,
        ..unlimited()
    })
    .await;
    let env = post_fhir(&client, &always, &patient).await.json();
    assert_eq!(env["data_record_location"], Value::Null);
    assert_eq!(env["status"], Value::Null);
    let records = always.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].location(), "FHIR-R4:0:0");
    assert_eq!(records[0].reported_location, None);
    assert_eq!(records[0].uuid, env["uuid"].as_str().unwrap_or_default());

    let half = start(Options {
        null_location_rate: 0.5,
        seed: 7,
        ..unlimited()
    })
    .await;
    let mut nulls = 0;
    for _ in 0..40 {
        if post_fhir(&client, &half, &patient).await.json()["data_record_location"].is_null() {
            nulls += 1;
        }
    }
    assert!((8..=32).contains(&nulls), "{nulls} of 40");
    assert_eq!(half.records().len(), 40);

    let never = start(unlimited()).await;
    for _ in 0..20 {
        assert!(
            post_fhir(&client, &never, &patient).await.json()["data_record_location"].is_string()
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Status and the emulator's own endpoints.

#[tokio::test]
async fn status_and_emulator_endpoints() {
    let sandbox = start(unlimited()).await;
    let client = Client::new();
    let status = get(&client, &sandbox, "/status").await;
    assert_eq!(status.status, StatusCode::OK);
    let s = status.json();
    assert_eq!(s["application"], "connect.asgi:app");
    assert_eq!(s["application_version"], "0.42.0");
    assert_eq!(s["is_reload_enabled"], false);
    assert_eq!(s["nats_client_status"], "CONNECTED");
    assert_eq!(s["kafka_broker_status"], "AVAILABLE");
    assert!(s["status_response_time"].is_f64());
    assert!(s["metrics"].is_object());

    post_fhir(
        &client,
        &sandbox,
        &json!({"resourceType": "Patient", "id": "1"}),
    )
    .await;
    post(
        &client,
        &sandbox,
        "/fhir/encounter",
        &json!({"resourceType": "encounter"}),
    )
    .await;
    let reply = get(&client, &sandbox, "/nowhere").await;
    assert_eq!(
        (reply.status, reply.json()),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    let reply = get(&client, &sandbox, "/fhir/Patient").await;
    assert_eq!(
        (reply.status, reply.json()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": "Method Not Allowed"})
        )
    );

    let stats = get(&client, &sandbox, "/_emulator/stats").await.json();
    assert_eq!(
        stats,
        json!({"requests": 5, "by_status": {"200": 2, "404": 2, "405": 1}, "workflow_runs": 1, "records": 1, "errors": 0})
    );
    assert_eq!(sandbox.request_count(), 5);
    let metrics = &get(&client, &sandbox, "/status").await.json()["metrics"];
    assert_eq!(metrics["run"]["count"], 1);
}

// ---------------------------------------------------------------------------------------------------
// TLS and the binary.

use connect_sandbox::pki;

fn trusting(ca_pem: &str) -> Client {
    Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM"))
        .build()
        .expect("a client")
}

#[tokio::test]
async fn tls_serves_a_client_that_trusts_the_ca_and_only_that_one() {
    let pki = pki();
    let sandbox = start(Options {
        tls: Some(TlsFiles::from_pem(
            pki.cert_pem.clone(),
            pki.key_pem.clone(),
        )),
        ..unlimited()
    })
    .await;
    assert_eq!(
        sandbox.base_url(),
        format!("https://localhost:{}", sandbox.addr.port())
    );
    let client = trusting(&pki.ca_pem);
    assert_eq!(
        get(&client, &sandbox, "/status").await.status,
        StatusCode::OK
    );
    let env = post_fhir(&client, &sandbox, &fixture("site_patient_bbuser29999.json"))
        .await
        .json();
    assert_eq!(env["data_record_location"], "FHIR-R4:0:0");
    // By IP too: the certificate names 127.0.0.1.
    let by_ip = send(client.get(format!("https://127.0.0.1:{}/status", sandbox.addr.port()))).await;
    assert_eq!(by_ip.status, StatusCode::OK);

    let stranger = Client::new();
    let err = stranger
        .get(format!("{}/status", sandbox.base_url()))
        .send()
        .await
        .expect_err("an untrusted certificate");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let other_ca = trusting(&self::pki().ca_pem);
    assert!(other_ca
        .get(format!("{}/status", sandbox.base_url()))
        .send()
        .await
        .is_err());
    let plain = Client::new()
        .get(format!("http://127.0.0.1:{}/status", sandbox.addr.port()))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "plain HTTP is not served"
    );
    // A failed handshake does not stop the server.
    assert_eq!(
        get(&client, &sandbox, "/status").await.status,
        StatusCode::OK
    );
}

struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Runs the binary and returns it with the URL from its `listening on` line.
async fn run_binary(args: &[&str]) -> (Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-sandbox"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .expect("readable stdout")
        .expect("a line before exit");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Child(child), url)
}

#[tokio::test]
async fn the_binary_announces_its_address_and_serves() {
    let (_child, url) = run_binary(&[
        "--listen",
        "127.0.0.1:0",
        "--rate-limit",
        "0",
        "--envelope",
        "2021",
    ])
    .await;
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p > 0), "{url}");
    let client = Client::new();
    let reply = send(client.get(format!("{url}/status"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(
        client
            .post(format!("{url}/fhir/Patient"))
            .json(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(reply.json()["data_record_location"], "FHIR-R4_PATIENT:0:0");

    // TLS from files.
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("connect-sandbox-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &pki.cert_pem).expect("cert written");
    std::fs::write(&key, &pki.key_pem).expect("key written");
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let (_tls_child, tls_url) = run_binary(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
    ])
    .await;
    assert!(tls_url.starts_with("https://127.0.0.1:"), "{tls_url}");
    let port = tls_url.rsplit(':').next().unwrap_or_default();
    let reply = send(trusting(&pki.ca_pem).get(format!("https://localhost:{port}/status"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_refuses_non_loopback_addresses() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-sandbox"))
        .args(["--listen", "0.0.0.0:0"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("exits promptly")
        .expect("runs");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it never listened");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only loopback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
