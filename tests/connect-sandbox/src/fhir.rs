//! FHIR R4 validation as connect does it, and the re-serialisation of what it stores.
//!
//! Connect validates each POST with `fhir.resources` 6.x (pydantic 1.x, `extra = forbid`) and answers
//! 500 with pydantic's error text. The element table `r4_schema.txt` was generated from those models
//! (`r4_schema_gen.py`) for every type reachable from Bundle, Patient, Coverage, ExplanationOfBenefit,
//! Organization and AuditEvent, so for those the checks and the messages follow pydantic's:
//! - a model first checks `resourceType`, then its pre-root validators (required primitives, which an
//!   `_x` extension may stand in for; then choice groups `x[x]`), and stops at the first of those that
//!   fails; then every field in pydantic's order; then unknown keys, sorted;
//! - required complex elements and lists are reported at their field, required primitives under
//!   `__root__`; `null` counts as absent except in a required field;
//! - `Bundle.entry.resource` and `contained` are validated as the type their `resourceType` names.
//!
//! Deliberately stricter than pydantic, because the FHIR JSON format requires it: primitive values must
//! have their JSON type (pydantic also takes `5` for a string, `"true"` for a boolean, `"1.5"` for a
//! decimal, `1.7` for an integer), dates and date-times must match the FHIR grammar and be real calendar
//! dates (pydantic accepts `2020-01-01T10:00` without a zone), and a string is never parsed as JSON
//! where an object is expected. Other model names (Encounter, Practitioner, ...) are only checked to be
//! objects naming their own type.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::pyjson::{py_type, Py};

mod repair_table;
pub use repair_table::repair_table_source;

const SCHEMA_TEXT: &str = include_str!("../schema/r4_schema.txt");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    Boolean,
    Integer,
    UnsignedInt,
    PositiveInt,
    Decimal,
    String,
    Markdown,
    Code,
    Id,
    Uri,
    Canonical,
    Url,
    Oid,
    Uuid,
    Base64Binary,
    Xhtml,
    Date,
    DateTime,
    Instant,
    Time,
}

impl Prim {
    fn parse(name: &str) -> Option<Prim> {
        Some(match name {
            "boolean" => Prim::Boolean,
            "integer" => Prim::Integer,
            "unsignedInt" => Prim::UnsignedInt,
            "positiveInt" => Prim::PositiveInt,
            "decimal" => Prim::Decimal,
            "string" => Prim::String,
            "markdown" => Prim::Markdown,
            "code" => Prim::Code,
            "id" => Prim::Id,
            "uri" => Prim::Uri,
            "canonical" => Prim::Canonical,
            "url" => Prim::Url,
            "oid" => Prim::Oid,
            "uuid" => Prim::Uuid,
            "base64Binary" => Prim::Base64Binary,
            "xhtml" => Prim::Xhtml,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "instant" => Prim::Instant,
            "time" => Prim::Time,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Ty {
    Prim(Prim),
    Model(&'static str),
    /// Any resource, by its `resourceType`.
    Resource,
}

#[derive(Debug)]
struct Element {
    name: &'static str,
    /// The type as the table names it (`code`, `Reference`, `Resource`).
    of: &'static str,
    ty: Ty,
    required: bool,
    many: bool,
    /// Position in FHIR's element order, which the stored JSON follows.
    seq: u32,
    /// A primitive with an `_name` twin for its id and extensions.
    twin: bool,
    /// A list that may hold nulls (most primitive lists, aligned with their `_x` list).
    null_items: bool,
}

#[derive(Debug)]
struct Choice {
    fields: Vec<&'static str>,
    required: bool,
}

#[derive(Debug)]
struct Model {
    name: &'static str,
    module: &'static str,
    is_resource: bool,
    /// In pydantic's field order.
    elements: Vec<Element>,
    /// Indexes into `elements`, in FHIR order.
    fhir_order: Vec<usize>,
    choices: Vec<Choice>,
    keys: HashSet<String>,
}

struct Schema {
    names: HashSet<&'static str>,
    models: HashMap<&'static str, Model>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| parse_schema(SCHEMA_TEXT))
}

fn parse_schema(text: &'static str) -> Schema {
    let mut names = HashSet::new();
    let mut models: HashMap<&'static str, Model> = HashMap::new();
    let mut section = "";
    let mut current: Option<Model> = None;
    let finish = |m: Option<Model>, models: &mut HashMap<&'static str, Model>| {
        if let Some(mut m) = m {
            let mut order: Vec<usize> = (0..m.elements.len()).collect();
            order.sort_by_key(|&i| m.elements[i].seq);
            m.fhir_order = order;
            models.insert(m.name, m);
        }
    };
    let mut choice_index: HashMap<&'static str, usize> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('@') {
            section = s;
            continue;
        }
        match section {
            "names" => names.extend(line.split_whitespace()),
            "types" if !line.starts_with(' ') => {
                finish(current.take(), &mut models);
                choice_index.clear();
                let mut it = line.split_whitespace();
                let (kind, name, module) = (it.next(), it.next(), it.next());
                let (Some(kind), Some(name), Some(module)) = (kind, name, module) else {
                    panic!("r4_schema.txt: bad type line {line:?}");
                };
                current = Some(Model {
                    name,
                    module,
                    is_resource: kind == "R",
                    elements: Vec::new(),
                    fhir_order: Vec::new(),
                    choices: Vec::new(),
                    keys: HashSet::new(),
                });
            }
            "types" => {
                let m = current
                    .as_mut()
                    .expect("r4_schema.txt: element before its type");
                let parts: Vec<&'static str> = line.split_whitespace().collect();
                assert!(parts.len() >= 4, "r4_schema.txt: bad element line {line:?}");
                let (name, ty, card, seq) = (parts[0], parts[1], parts[2], parts[3]);
                let ty = match Prim::parse(ty) {
                    Some(p) => Ty::Prim(p),
                    None if ty == "Resource" => Ty::Resource,
                    None => Ty::Model(ty),
                };
                let flags = &parts[4..];
                let twin = matches!(ty, Ty::Prim(_)) && !flags.contains(&"no_");
                let null_items = flags.contains(&"null_");
                if let Some(group) = flags.iter().find(|p| !p.ends_with('_')) {
                    let (group, required) = match group.strip_suffix('!') {
                        Some(g) => (g, true),
                        None => (*group, false),
                    };
                    let idx = *choice_index.entry(group).or_insert_with(|| {
                        m.choices.push(Choice {
                            fields: Vec::new(),
                            required,
                        });
                        m.choices.len() - 1
                    });
                    m.choices[idx].fields.push(name);
                }
                m.keys.insert(name.to_string());
                if twin {
                    m.keys.insert(format!("_{name}"));
                }
                m.elements.push(Element {
                    name,
                    of: parts[1],
                    ty,
                    required: card.starts_with('1'),
                    many: card.ends_with('*'),
                    seq: seq.parse().expect("r4_schema.txt: element position"),
                    twin,
                    null_items,
                });
            }
            _ => panic!("r4_schema.txt: line outside a section: {line:?}"),
        }
    }
    finish(current.take(), &mut models);
    for m in models.values() {
        for e in &m.elements {
            if let Ty::Model(t) = e.ty {
                assert!(
                    models.contains_key(t),
                    "r4_schema.txt: {}.{} names unknown type {t}",
                    m.name,
                    e.name
                );
            }
        }
    }
    Schema { names, models }
}

/// Whether `name` is a key of fhir.resources' `MODEL_CLASSES`, which is what connect's 404 check uses.
/// Case-sensitive; besides the resource types it holds the data types and backbone elements.
pub fn is_model_name(name: &str) -> bool {
    schema().names.contains(name)
}

/// Whether this emulator checks `name` element by element (rather than only as an object).
pub fn is_fully_modelled(name: &str) -> bool {
    schema().models.contains_key(name)
}

struct ErrorItem {
    loc: Vec<String>,
    msg: String,
    ty: String,
    ctx: Vec<(&'static str, String)>,
}

/// An exception that escapes pydantic (a `LookupError` or `AttributeError` in fhir.resources), which
/// connect reports as the bare exception text.
struct Fatal(String);

type Step = Result<(), Fatal>;

struct Validator {
    schema: &'static Schema,
    loc: Vec<String>,
    errors: Vec<ErrorItem>,
}

/// Validates `body` as connect's `construct_fhir_element(resource_type, body)` would, returning the
/// text connect puts in its 500 `detail` when it fails.
pub fn validate(resource_type: &str, body: &Value) -> Result<(), String> {
    let schema = schema();
    let Some(obj) = body.as_object() else {
        return Err(format!(
            "1 validation error for {resource_type}\n__root__\n  Value is expected from the instance of \
             <class 'fhir.resources.{}.{resource_type}'>, but got type <class '{}'> (type=value_error)",
            resource_type.to_lowercase(),
            py_type(body)
        ));
    };
    let Some(model) = schema.models.get(resource_type) else {
        // Not modelled here: only the object shape and its own resourceType, checked by the caller.
        return Ok(());
    };
    let mut v = Validator {
        schema,
        loc: Vec::new(),
        errors: Vec::new(),
    };
    if let Err(Fatal(text)) = v.model(model, obj) {
        return Err(text);
    }
    if v.errors.is_empty() {
        return Ok(());
    }
    let n = v.errors.len();
    let mut text = format!(
        "{n} validation error{} for {resource_type}",
        if n == 1 { "" } else { "s" }
    );
    for e in &v.errors {
        text.push('\n');
        text.push_str(&e.loc.join(" -> "));
        text.push_str("\n  ");
        text.push_str(&e.msg);
        text.push_str(" (type=");
        text.push_str(&e.ty);
        for (k, val) in &e.ctx {
            text.push_str(&format!("; {k}={val}"));
        }
        text.push(')');
    }
    Err(text)
}

fn is_present(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

fn class_path(m: &Model) -> String {
    format!("<class 'fhir.resources.{}.{}'>", m.module, m.name)
}

fn py_list(fields: &[&str]) -> String {
    format!(
        "[{}]",
        fields
            .iter()
            .map(|f| format!("'{f}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Validator {
    fn error(&mut self, at: &[&str], msg: impl Into<String>, ty: &str) {
        self.error_ctx(at, msg, ty, Vec::new());
    }

    fn error_ctx(
        &mut self,
        at: &[&str],
        msg: impl Into<String>,
        ty: &str,
        ctx: Vec<(&'static str, String)>,
    ) {
        let mut loc = self.loc.clone();
        loc.extend(at.iter().map(|s| s.to_string()));
        self.errors.push(ErrorItem {
            loc,
            msg: msg.into(),
            ty: ty.into(),
            ctx,
        });
    }

    fn with<T>(&mut self, part: impl Into<String>, f: impl FnOnce(&mut Self) -> T) -> T {
        self.loc.push(part.into());
        let out = f(self);
        self.loc.pop();
        out
    }

    fn model(&mut self, m: &'static Model, obj: &Map<String, Value>) -> Step {
        // FHIRAbstractModel.__init__: `resource_type`, overridden by `resourceType`, must name this model.
        let declared = obj.get("resourceType").or_else(|| obj.get("resource_type"));
        if let Some(rt) = declared.filter(|v| !v.is_null()) {
            if rt.as_str() != Some(m.name) {
                let got = super::pyjson::py_str(Some(rt));
                let text = format!(
                    "``fhir.resources.{}.{}`` expects resource type ``{}``, but got ``{got}``. Make sure \
                     resource type name is correct and right ModelClass has been chosen.",
                    m.module, m.name, m.name
                );
                self.error_ctx(
                    &["resource_type"],
                    format!("Wrong ResourceType: {text}"),
                    "value_error.wrong.resource_type",
                    vec![("error", text.clone())],
                );
                return Ok(());
            }
        }
        if !self.pre_root(m, obj) {
            return Ok(());
        }
        if let Some(c) = obj.get("fhir_comments").filter(|c| !c.is_null()) {
            let ok = c.is_string() || c.as_array().is_some_and(|a| a.iter().all(Value::is_string));
            if !ok {
                self.error(&["fhir_comments"], "str type expected", "type_error.str");
            }
        }
        for e in &m.elements {
            match obj.get(e.name) {
                None if e.required && !matches!(e.ty, Ty::Prim(_)) => {
                    self.error(&[e.name], "field required", "value_error.missing");
                }
                Some(Value::Null) if e.required && !matches!(e.ty, Ty::Prim(_)) => {
                    self.error(
                        &[e.name],
                        "none is not an allowed value",
                        "type_error.none.not_allowed",
                    );
                }
                None | Some(Value::Null) => {}
                Some(v) => self.with(e.name, |s| s.field(e.ty, e.many, v, e.null_items))?,
            }
            if e.twin {
                let twin = format!("_{}", e.name);
                if let Some(v) = obj.get(&twin).filter(|v| !v.is_null()) {
                    let ext = &self.schema.models["FHIRPrimitiveExtension"];
                    // Like primitive lists, `_x` lists may hold nulls to stay aligned with `x`.
                    self.with(twin, |s| s.field(Ty::Model(ext.name), e.many, v, true))?;
                }
            }
        }
        let mut extra: Vec<&String> = obj
            .keys()
            .filter(|k| {
                !m.keys.contains(k.as_str())
                    && !matches!(
                        k.as_str(),
                        "resourceType" | "resource_type" | "fhir_comments"
                    )
            })
            .collect();
        extra.sort();
        for k in extra {
            self.error(&[k], "extra fields not permitted", "value_error.extra");
        }
        Ok(())
    }

    /// The pre-root validators; false when one failed, which ends validation of this model.
    fn pre_root(&mut self, m: &'static Model, obj: &Map<String, Value>) -> bool {
        if m.name == "FHIRPrimitiveExtension" {
            if !is_present(obj.get("extension")) && !is_present(obj.get("fhir_comments")) {
                self.error(
                    &["__root__", "extension"],
                    "field required",
                    "value_error.missing",
                );
                return false;
            }
            return true;
        }
        let before = self.errors.len();
        for e in m
            .elements
            .iter()
            .filter(|e| e.required && matches!(e.ty, Ty::Prim(_)))
        {
            let value = obj.get(e.name);
            if is_present(value) {
                continue;
            }
            // An `_x` with at least one extension (e.g. data-absent-reason) stands in for the value.
            let twin = format!("_{}", e.name);
            match obj.get(&twin) {
                Some(Value::Object(ext)) => {
                    if ext
                        .get("extension")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty())
                    {
                        continue;
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => {
                    let ext = &self.schema.models["FHIRPrimitiveExtension"];
                    self.with("__root__", |s| {
                        s.with(twin, |s| s.not_an_object(ext, other))
                    });
                    continue;
                }
            }
            if value.is_none() {
                self.error(
                    &["__root__", e.name],
                    "field required",
                    "value_error.missing",
                );
            } else {
                self.error(
                    &["__root__", e.name],
                    "none is not an allowed value",
                    "type_error.none.not_allowed",
                );
            }
        }
        if self.errors.len() > before {
            return false;
        }
        for choice in &m.choices {
            let found = choice
                .fields
                .iter()
                .filter(|f| is_present(obj.get(**f)))
                .count();
            if found > 1 {
                let msg = format!(
                    "Any of one field value is expected from this list {}, but got multiple!",
                    py_list(&choice.fields)
                );
                self.error(&["__root__"], msg, "value_error");
                return false;
            }
            if choice.required && found == 0 {
                let msg = format!(
                    "Expect any of field value from this list {}.",
                    py_list(&choice.fields)
                );
                self.error(&["__root__"], msg, "value_error");
                return false;
            }
        }
        true
    }

    /// A present, non-null field value. `null_items`: whether a list may hold nulls.
    fn field(&mut self, ty: Ty, many: bool, v: &Value, null_items: bool) -> Step {
        if !many {
            return self.value(ty, v);
        }
        let Some(items) = v.as_array() else {
            self.error(&[], "value is not a valid list", "type_error.list");
            return Ok(());
        };
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::Null if null_items => {}
                Value::Null => {
                    self.with(i.to_string(), |s| {
                        s.error(
                            &[],
                            "none is not an allowed value",
                            "type_error.none.not_allowed",
                        )
                    });
                }
                _ => self.with(i.to_string(), |s| s.value(ty, item))?,
            }
        }
        Ok(())
    }

    fn value(&mut self, ty: Ty, v: &Value) -> Step {
        match ty {
            Ty::Prim(p) => {
                self.primitive(p, v);
                Ok(())
            }
            Ty::Model(name) => {
                let m = &self.schema.models[name];
                match v {
                    Value::Object(obj) => self.model(m, obj),
                    other => {
                        self.not_an_object(m, other);
                        Ok(())
                    }
                }
            }
            Ty::Resource => self.resource(v),
        }
    }

    fn not_an_object(&mut self, m: &Model, v: &Value) {
        let msg = if let Value::String(text) = v {
            // pydantic parses a string as JSON first; one holding a non-object gets its own message.
            // One holding an object it would validate: a FHIR document never nests one, so not here.
            match serde_json::from_str::<Value>(text) {
                Ok(parsed) if !parsed.is_object() => {
                    let msg = format!("{} expected dict not {}", m.name, py_type(&parsed));
                    self.error(&["__root__"], msg, "type_error");
                    return;
                }
                _ => format!(
                    "Invalid json str value has been provided for class {}",
                    class_path(m)
                ),
            }
        } else {
            format!(
                "Value is expected from the instance of {}, but got type <class '{}'>",
                class_path(m),
                py_type(v)
            )
        };
        self.error(&["__root__"], msg, "value_error");
    }

    /// `ResourceType`: dispatches on `resourceType`, a missing one meaning the abstract `Resource`.
    fn resource(&mut self, v: &Value) -> Step {
        let obj = match v {
            Value::Object(obj) => obj,
            Value::String(s) => {
                // fhir.resources would json-decode the string; a FHIR document never nests one.
                let ctx = vec![
                    ("msg", "Expecting value".to_string()),
                    ("doc", s.clone()),
                    ("pos", "0".to_string()),
                    ("lineno", "1".to_string()),
                    ("colno", "1".to_string()),
                ];
                self.error_ctx(
                    &[],
                    "Expecting value: line 1 column 1 (char 0)",
                    "value_error.jsondecode",
                    ctx,
                );
                return Ok(());
            }
            other => {
                return Err(Fatal(format!(
                    "'{}' object has no attribute 'get'",
                    py_type(other)
                )))
            }
        };
        let name = match obj.get("resourceType") {
            None | Some(Value::Null) => "Resource",
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                // Python's `resourceType + "Type"`.
                let msg = match other {
                    Value::Array(_) => {
                        "can only concatenate list (not \"str\") to list".to_string()
                    }
                    _ => format!(
                        "unsupported operand type(s) for +: '{}' and 'str'",
                        py_type(other)
                    ),
                };
                self.error(&[], msg, "type_error");
                return Ok(());
            }
        };
        if let Some(m) = self.schema.models.get(name) {
            return self.model(m, obj);
        }
        if self.schema.names.contains(name) {
            // A real type this emulator does not model element by element.
            return Ok(());
        }
        Err(Fatal(format!(
            "'fhir.resources.fhirtypes.{name}Type' doesnt found."
        )))
    }

    fn primitive(&mut self, p: Prim, v: &Value) {
        match p {
            Prim::Boolean => {
                if !v.is_boolean() {
                    self.error(
                        &[],
                        "value could not be parsed to a boolean",
                        "type_error.bool",
                    );
                }
            }
            Prim::Integer | Prim::UnsignedInt | Prim::PositiveInt => {
                let n = v.as_i64().or_else(|| v.as_u64().map(|_| i64::MAX));
                match n {
                    None => self.error(&[], "value is not a valid integer", "type_error.integer"),
                    Some(n) if p == Prim::UnsignedInt && n < 0 => self.error_ctx(
                        &[],
                        "ensure this value is greater than or equal to 0",
                        "value_error.number.not_ge",
                        vec![("limit_value", "0".into())],
                    ),
                    Some(n) if p == Prim::PositiveInt && n <= 0 => self.error_ctx(
                        &[],
                        "ensure this value is greater than 0",
                        "value_error.number.not_gt",
                        vec![("limit_value", "0".into())],
                    ),
                    Some(_) => {}
                }
            }
            Prim::Decimal => {
                if !v.is_number() {
                    self.error(&[], "value is not a valid decimal", "type_error.decimal");
                }
            }
            _ => {
                let Some(s) = v.as_str() else {
                    // pydantic's date parsers name their accepted inputs (and take numbers as timestamps).
                    let parsed = match p {
                        Prim::Date => Some("date"),
                        Prim::DateTime | Prim::Instant => Some("datetime"),
                        Prim::Time => Some("time"),
                        _ => None,
                    };
                    match parsed {
                        Some(what) => self.error(
                            &[],
                            format!("invalid type; expected {what}, string, bytes, int or float"),
                            "type_error",
                        ),
                        None => self.error(&[], "str type expected", "type_error.str"),
                    }
                    return;
                };
                self.string(p, s);
            }
        }
    }

    fn regex_error(&mut self, pattern: &str) {
        self.error_ctx(
            &[],
            format!("string does not match regex \"{pattern}\""),
            "value_error.str.regex",
            vec![("pattern", pattern.to_string())],
        );
    }

    fn string(&mut self, p: Prim, s: &str) {
        match p {
            // `[ \r\n\t\S]+`, matched at the start: not empty, and not starting with other whitespace.
            Prim::String => {
                let ok = s
                    .chars()
                    .next()
                    .is_some_and(|c| matches!(c, ' ' | '\r' | '\n' | '\t') || !c.is_whitespace());
                if !ok {
                    self.regex_error(r"[ \r\n\t\S]+");
                }
            }
            // Words of non-whitespace separated by single whitespace characters.
            Prim::Code => {
                let chars: Vec<char> = s.chars().collect();
                let ok = !chars.is_empty()
                    && !chars[0].is_whitespace()
                    && !chars[chars.len() - 1].is_whitespace()
                    && !chars
                        .windows(2)
                        .any(|w| w[0].is_whitespace() && w[1].is_whitespace());
                if !ok {
                    self.regex_error(r"^[^\s]+(\s[^\s]+)*$");
                }
            }
            Prim::Id => {
                let len = s.chars().count();
                if len < 1 {
                    self.error_ctx(
                        &[],
                        "ensure this value has at least 1 characters",
                        "value_error.any_str.min_length",
                        vec![("limit_value", "1".into())],
                    );
                } else if len > 64 {
                    self.error_ctx(
                        &[],
                        "ensure this value has at most 64 characters",
                        "value_error.any_str.max_length",
                        vec![("limit_value", "64".into())],
                    );
                } else if !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    self.regex_error(r"^[A-Za-z0-9\-.]+$");
                }
            }
            Prim::Oid => {
                let ok = s.strip_prefix("urn:oid:").is_some_and(|rest| {
                    let mut parts = rest.split('.');
                    let first_ok = parts.next().is_some_and(|f| matches!(f, "0" | "1" | "2"));
                    let rest: Vec<&str> = parts.collect();
                    first_ok
                        && !rest.is_empty()
                        && rest.iter().all(|p| {
                            !p.is_empty()
                                && p.bytes().all(|b| b.is_ascii_digit())
                                && (p == &"0" || !p.starts_with('0'))
                        })
                });
                if !ok {
                    self.regex_error(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$");
                }
            }
            Prim::Uuid => {
                let hex: String = s
                    .trim_start_matches("urn:uuid:")
                    .chars()
                    .filter(|c| !matches!(c, '-' | '{' | '}'))
                    .collect();
                if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    self.error(&[], "value is not a valid uuid", "type_error.uuid");
                }
            }
            Prim::Url => self.url(s),
            Prim::Date if !is_fhir_date(s) => {
                self.error(&[], "invalid date format", "value_error.date");
            }
            Prim::DateTime => {
                // fhir.resources treats what looks like `YYYY(-MM)?(-DD)?` as a date, with a date's error.
                let date_shaped = {
                    let b = s.as_bytes();
                    let digit = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
                    match b.len() {
                        4 => digit(0..4),
                        7 => digit(0..4) && b[4] == b'-' && digit(5..7),
                        10 => {
                            digit(0..4)
                                && b[4] == b'-'
                                && digit(5..7)
                                && b[7] == b'-'
                                && digit(8..10)
                        }
                        _ => false,
                    }
                };
                if date_shaped {
                    if !is_fhir_date(s) {
                        self.error(&[], "invalid date format", "value_error.date");
                    }
                } else if !is_fhir_date_time(s, false) {
                    self.error(&[], "invalid datetime format", "value_error.datetime");
                }
            }
            Prim::Instant if !is_fhir_date_time(s, true) => {
                self.error(&[], "invalid datetime format", "value_error.datetime");
            }
            Prim::Time if !is_fhir_time(s) => {
                self.error(&[], "invalid time format", "value_error.time");
            }
            // Valid dates and times; uri/canonical (`\S*` matches any start), markdown, xhtml and
            // base64Binary take any text.
            _ => {}
        }
    }

    /// fhir.resources' `Url`: mailto/mllp/llp, a relative `/Type/...` path, or pydantic's `AnyUrl`.
    fn url(&mut self, s: &str) {
        if s.starts_with("mailto:") || s.starts_with("mllp:") || s.starts_with("llp:") {
            return;
        }
        if s.starts_with('/')
            && s[1..]
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '?' && c != '/')
        {
            return;
        }
        let scheme_ok = s.split_once("://").is_some_and(|(scheme, _)| {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        if !scheme_ok {
            self.error(
                &[],
                "invalid or missing URL scheme",
                "value_error.url.scheme",
            );
            return;
        }
        let rest = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        if host.is_empty() || s.contains(char::is_whitespace) {
            self.error(&[], "URL host invalid", "value_error.url.host");
        }
    }
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date, year 0001 or later.
fn is_fhir_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.is_empty() || parts.len() > 3 || parts[0].len() != 4 {
        return false;
    }
    let Some(year) = digits(parts[0]).filter(|y| *y >= 1) else {
        return false;
    };
    if parts.len() == 1 {
        return true;
    }
    let Some(month) = digits(parts[1]).filter(|m| parts[1].len() == 2 && (1..=12).contains(m))
    else {
        return false;
    };
    if parts.len() == 2 {
        return true;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    digits(parts[2]).is_some_and(|d| parts[2].len() == 2 && (1..=days).contains(&d))
}

/// `hh:mm:ss(.fff)?`, with 60 allowed for a leap second.
fn is_fhir_time(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (s, None),
    };
    if frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    parts.len() == 3
        && parts.iter().all(|p| p.len() == 2)
        && digits(parts[0]).is_some_and(|h| h <= 23)
        && digits(parts[1]).is_some_and(|m| m <= 59)
        && digits(parts[2]).is_some_and(|s| s <= 60)
}

/// A FHIR dateTime with a time part (`instant` also needs the full date), time zone required.
fn is_fhir_date_time(s: &str, instant: bool) -> bool {
    let Some((date, rest)) = s.split_once('T') else {
        return !instant && is_fhir_date(s);
    };
    if date.len() != 10 || !is_fhir_date(date) {
        return false;
    }
    let (time, zone) = if let Some(t) = rest.strip_suffix('Z') {
        (t, None)
    } else if rest.len() > 6 && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-') {
        (&rest[..rest.len() - 6], Some(&rest[rest.len() - 5..]))
    } else {
        return false;
    };
    let zone_ok = zone.is_none_or(|z| {
        let (h, m) = z.split_once(':').unwrap_or(("", ""));
        h.len() == 2
            && m.len() == 2
            && matches!((digits(h), digits(m)), (Some(h), Some(m)) if (h <= 13 && m <= 59) || (h == 14 && m == 0))
    });
    zone_ok && is_fhir_time(time)
}

/// The resource as connect stores it: `json.dumps(model.dict())`, whose keys follow FHIR's element
/// order (`resourceType` first, each `_x` after its `x`, `fhir_comments` last) and which drops nulls
/// and empty lists and objects. Values are kept as posted; connect would also turn decimals into
/// floats (`12` becomes `12.0`) and date-times into Python's isoformat (`Z` becomes `+00:00`).
pub(super) fn stored_form(resource_type: &str, body: &Value) -> Py {
    let schema = schema();
    match schema.models.get(resource_type) {
        Some(m) if body.is_object() => ordered_model(schema, m, body),
        _ => ordered_unknown(body),
    }
}

fn prune(pairs: Vec<(String, Py)>) -> Py {
    Py::Dict(
        pairs
            .into_iter()
            .filter(|(_, v)| {
                !matches!(v, Py::Null)
                    && !matches!(v, Py::List(l) if l.is_empty())
                    && !matches!(v, Py::Dict(d) if d.is_empty())
            })
            .collect(),
    )
}

fn ordered_model(schema: &Schema, m: &Model, v: &Value) -> Py {
    let Some(obj) = v.as_object() else {
        return Py::from_value(v);
    };
    let mut out = Vec::new();
    if m.is_resource {
        out.push(("resourceType".to_string(), Py::str(m.name)));
    }
    for &i in &m.fhir_order {
        let e = &m.elements[i];
        if let Some(val) = obj.get(e.name) {
            out.push((e.name.to_string(), ordered_typed(schema, e.ty, val)));
        }
        if e.twin {
            let twin = format!("_{}", e.name);
            if let Some(val) = obj.get(&twin) {
                let ext = Ty::Model("FHIRPrimitiveExtension");
                out.push((twin, ordered_typed(schema, ext, val)));
            }
        }
    }
    if let Some(c) = obj.get("fhir_comments") {
        out.push(("fhir_comments".to_string(), Py::from_value(c)));
    }
    prune(out)
}

fn ordered_typed(schema: &Schema, ty: Ty, v: &Value) -> Py {
    match (ty, v) {
        (_, Value::Array(items)) => {
            Py::List(items.iter().map(|i| ordered_typed(schema, ty, i)).collect())
        }
        (Ty::Model(name), Value::Object(_)) => ordered_model(schema, &schema.models[name], v),
        (Ty::Resource, Value::Object(obj)) => match obj.get("resourceType").and_then(Value::as_str)
        {
            Some(name) if schema.models.contains_key(name) => {
                ordered_model(schema, &schema.models[name], v)
            }
            _ => ordered_unknown(v),
        },
        _ => Py::from_value(v),
    }
}

/// A type not modelled here: `resourceType` first, then the keys in sorted order.
fn ordered_unknown(v: &Value) -> Py {
    let Some(obj) = v.as_object() else {
        return Py::from_value(v);
    };
    let mut out = Vec::new();
    if let Some(rt) = obj.get("resourceType") {
        out.push(("resourceType".to_string(), Py::from_value(rt)));
    }
    for (k, val) in obj {
        if k != "resourceType" {
            out.push((k.clone(), Py::from_value(val)));
        }
    }
    prune(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_loads_and_knows_connects_names() {
        let s = schema();
        assert!(
            s.names.len() > 600,
            "MODEL_CLASSES has every R4 model: {}",
            s.names.len()
        );
        for name in [
            "Patient",
            "Encounter",
            "CodeableConcept",
            "ExplanationOfBenefitItem",
            "FHIRPrimitiveExtension",
        ] {
            assert!(is_model_name(name), "{name}");
        }
        assert!(!is_model_name("encounter"));
        assert!(!is_model_name("Foo"));
        let eob = &s.models["ExplanationOfBenefit"];
        let req: Vec<&str> = eob
            .elements
            .iter()
            .filter(|e| e.required)
            .map(|e| e.name)
            .collect();
        assert_eq!(
            req,
            [
                "created",
                "insurance",
                "insurer",
                "outcome",
                "patient",
                "provider",
                "status",
                "type",
                "use"
            ]
        );
    }

    #[test]
    fn dates_follow_the_fhir_grammar() {
        for ok in ["2020", "2020-02", "2020-02-29", "2000-02-29"] {
            assert!(is_fhir_date(ok), "{ok}");
        }
        for bad in [
            "20201",
            "2020-13",
            "2021-02-29",
            "1900-02-29",
            "2020-1-01",
            "0000",
            "",
        ] {
            assert!(!is_fhir_date(bad), "{bad}");
        }
        assert!(is_fhir_date_time("2015-02-07T13:28:17-05:00", false));
        assert!(is_fhir_date_time("2017-01-01T00:00:00.000Z", true));
        assert!(is_fhir_date_time("2020-01", false));
        assert!(!is_fhir_date_time("2020-01", true));
        assert!(
            !is_fhir_date_time("2020-01-01T10:00:00", false),
            "a time needs a zone"
        );
        assert!(
            !is_fhir_date_time("2020-01-01T10:00Z", false),
            "seconds are required"
        );
        assert!(!is_fhir_date_time("2020-01-01T24:00:00Z", false));
        assert!(!is_fhir_date_time("2020-01-01T10:00:00+15:00", false));
    }

    #[test]
    fn stored_form_follows_fhir_element_order() {
        let body = json!({"gender": "male", "_gender": {"extension": [{"valueCode": "x", "url": "u"}]},
                          "id": "1", "resourceType": "Patient", "identifier": [], "active": null});
        let text = stored_form("Patient", &body).dumps();
        assert_eq!(
            text,
            r#"{"resourceType": "Patient", "id": "1", "gender": "male", "_gender": {"extension": [{"url": "u", "valueCode": "x"}]}}"#
        );
    }
}
