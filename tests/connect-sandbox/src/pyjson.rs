//! JSON written the way connect's Python writes it.
//!
//! Key order matters to what a client sees (connect builds its dicts in a fixed order) and serde_json's
//! `Value` sorts keys, so the emulator builds [`Py`] values, which keep insertion order, and writes them
//! in one of two styles:
//! - [`Py::dumps`]: `json.dumps` defaults, as used for the base64 `data`, the Kafka message (pydantic's
//!   `.json()`) and the `LFHError` text: separators `", "` and `": "`, non-ASCII escaped.
//! - [`Py::compact`]: FastAPI's `JSONResponse`: separators `","` and `":"`, UTF-8 kept.

use serde_json::{Number, Value};

/// A JSON value that keeps its object keys in insertion order.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    List(Vec<Py>),
    Dict(Vec<(String, Py)>),
}

impl Py {
    /// A dict from `(key, value)` pairs, in that order.
    pub fn dict<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Py)>) -> Py {
        Py::Dict(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Py {
        Py::Str(s.into())
    }

    pub fn opt_str(s: Option<impl Into<String>>) -> Py {
        s.map_or(Py::Null, |s| Py::Str(s.into()))
    }

    pub fn float(f: f64) -> Py {
        Number::from_f64(f).map_or(Py::Null, Py::Num)
    }

    pub fn opt_float(f: Option<f64>) -> Py {
        f.map_or(Py::Null, Py::float)
    }

    /// Converts a serde value; its object keys come out in serde_json's (sorted) order.
    pub fn from_value(v: &Value) -> Py {
        match v {
            Value::Null => Py::Null,
            Value::Bool(b) => Py::Bool(*b),
            Value::Number(n) => Py::Num(n.clone()),
            Value::String(s) => Py::Str(s.clone()),
            Value::Array(a) => Py::List(a.iter().map(Py::from_value).collect()),
            Value::Object(m) => Py::Dict(
                m.iter()
                    .map(|(k, v)| (k.clone(), Py::from_value(v)))
                    .collect(),
            ),
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Py::Null => Value::Null,
            Py::Bool(b) => Value::Bool(*b),
            Py::Num(n) => Value::Number(n.clone()),
            Py::Str(s) => Value::String(s.clone()),
            Py::List(a) => Value::Array(a.iter().map(Py::to_value).collect()),
            Py::Dict(d) => {
                Value::Object(d.iter().map(|(k, v)| (k.clone(), v.to_value())).collect())
            }
        }
    }

    /// `json.dumps(value)` with Python's defaults.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, true);
        out
    }

    /// FastAPI's response encoding.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, false);
        out
    }

    fn write(&self, out: &mut String, python: bool) {
        let (item_sep, key_sep) = if python { (", ", ": ") } else { (",", ":") };
        match self {
            Py::Null => out.push_str("null"),
            Py::Bool(true) => out.push_str("true"),
            Py::Bool(false) => out.push_str("false"),
            Py::Num(n) => out.push_str(&number_repr(n)),
            Py::Str(s) => write_str(out, s, python),
            Py::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    item.write(out, python);
                }
                out.push(']');
            }
            Py::Dict(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    write_str(out, k, python);
                    out.push_str(key_sep);
                    v.write(out, python);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            // json.dumps' ensure_ascii escapes everything outside ' '..='~', astral characters as a
            // surrogate pair.
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn number_repr(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    n.as_f64().map_or_else(|| n.to_string(), float_repr)
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents -4..16, otherwise
/// `d.ddde+XX` with at least two exponent digits.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python's `str(x)` of a decoded JSON value, as interpolated into connect's f-strings.
pub fn py_str(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "None".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => py_repr(v),
    }
}

/// Python's `repr(x)` of a decoded JSON value.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => number_repr(n),
        Value::String(s) => {
            // repr prefers single quotes, switching to double quotes when only ' occurs.
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        out.push_str(&format!("\\x{:02x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's type name of a decoded JSON value, as in `<class 'int'>`.
pub fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "float",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, want) in [
            (1.5, "1.5"),
            (123.0, "123.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (-2.25, "-2.25"),
            (1e22, "1e+22"),
            (0.1, "0.1"),
        ] {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_ascii_escapes() {
        let v = Py::dict([
            ("b", Py::from_value(&json!([1, 2.5, true, null]))),
            ("a", Py::str("é\"\n😀\u{7f}")),
        ]);
        assert_eq!(
            v.dumps(),
            r#"{"b": [1, 2.5, true, null], "a": "\u00e9\"\n\ud83d\ude00\u007f"}"#
        );
        assert_eq!(
            v.compact(),
            "{\"b\":[1,2.5,true,null],\"a\":\"é\\\"\\n😀\u{7f}\"}"
        );
    }

    #[test]
    fn str_and_repr_follow_python() {
        assert_eq!(py_str(None), "None");
        assert_eq!(py_str(Some(&json!("Patient"))), "Patient");
        assert_eq!(py_str(Some(&json!(5))), "5");
        assert_eq!(py_str(Some(&json!(true))), "True");
        assert_eq!(py_str(Some(&json!({"a": [1, "x"]}))), "{'a': [1, 'x']}");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
    }
}
