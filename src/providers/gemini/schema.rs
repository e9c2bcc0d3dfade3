//! JSON schemas (tool parameters, `response_format.json_schema`) reduced to Gemini's
//! OpenAPI-subset `Schema` dialect.
//!
//! Gemini's `Schema` has no `$ref`, `$defs` or `allOf`, which Pydantic and zod emit for
//! every nested model. Two passes:
//! 1. [`inline`]: local `$ref`s (`#/$defs/…`, `#/definitions/…`, any `#/…` pointer) are
//!    replaced by what they point to, `allOf` members are merged into their schema. A
//!    recursive schema (a `$ref` reached again inside itself) cannot be written without
//!    `$ref` and is refused with a 400 that names the reference; so are references nested
//!    deeper than [`MAX_DEPTH`] and schemas that grow past [`MAX_NODES`] once inlined.
//! 2. [`dialect`]: only Gemini's keys are kept (`additionalProperties`, `$schema`, `strict`…
//!    dropped); `"type": ["X", "null"]`, `anyOf [X, {"type": "null"}]` and `null` enum
//!    values become `nullable`; `const` becomes a one-value `enum`; `oneOf` becomes `anyOf`.

use crate::errors::ApiError;
use serde_json::{Map, Value};

/// How many `$ref`s may be open inside one another.
pub const MAX_DEPTH: usize = 32;
/// Schema objects an inlined schema may hold (a small schema whose definitions refer to
/// each other many times can expand exponentially).
pub const MAX_NODES: usize = 10_000;

/// Keys of Gemini's `Schema` object; everything else is dropped.
const SCHEMA_KEYS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "propertyOrdering",
    "default",
    "items",
    "minimum",
    "maximum",
];

/// A JSON schema in Gemini's dialect; `param` names the request field it came from (for
/// the 400 a schema Gemini cannot take gets).
pub fn gemini_schema(schema: &Value, param: &'static str) -> Result<Value, ApiError> {
    let mut inliner = Inliner {
        root: schema,
        open: Vec::new(),
        nodes: 0,
    };
    let flat = inliner.inline(schema).map_err(|why| {
        ApiError::invalid_param(
            param,
            format!("Gemini cannot take this JSON schema: {why}. Gemini's schema dialect has no `$ref`; send a schema without recursion, or choose a model of another provider."),
        )
    })?;
    Ok(dialect(&flat))
}

struct Inliner<'a> {
    root: &'a Value,
    /// The `$ref`s being inlined, outermost first (cycle and depth check).
    open: Vec<&'a str>,
    nodes: usize,
}

impl<'a> Inliner<'a> {
    /// `node` with every local `$ref` replaced and every `allOf` merged.
    fn inline(&mut self, node: &'a Value) -> Result<Value, String> {
        let Value::Object(m) = node else {
            return Ok(node.clone());
        };
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!(
                "it holds more than {MAX_NODES} schemas once its `$ref`s are inlined"
            ));
        }
        let mut out = Map::new();
        if let Some(r) = m.get("$ref") {
            let r = r.as_str().ok_or("a `$ref` is not a string")?;
            if self.open.contains(&r) {
                return Err(format!(
                    "it is recursive: `{r}` refers to itself (through {})",
                    self.open.join(" → ")
                ));
            }
            if self.open.len() >= MAX_DEPTH {
                return Err(format!("its `$ref`s are nested more than {MAX_DEPTH} deep"));
            }
            let target = self.resolve(r)?;
            self.open.push(r);
            let t = self.inline(target)?;
            self.open.pop();
            if let Value::Object(t) = t {
                out = t;
            }
        }
        let mut all_of = Vec::new();
        for (k, v) in m {
            match k.as_str() {
                "$ref" | "$defs" | "definitions" => {}
                "allOf" => {
                    for s in v.as_array().into_iter().flatten() {
                        all_of.push(self.inline(s)?);
                    }
                }
                "properties" | "patternProperties" => {
                    let mut props = Map::new();
                    for (name, s) in v.as_object().into_iter().flatten() {
                        props.insert(name.clone(), self.inline(s)?);
                    }
                    // The `$ref` sibling keys win over the referenced schema's.
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" | "additionalProperties" | "not" => {
                    out.insert(k.clone(), self.inline(v)?);
                }
                "anyOf" | "oneOf" | "prefixItems" => {
                    let mut alts = Vec::new();
                    for s in v.as_array().into_iter().flatten() {
                        alts.push(self.inline(s)?);
                    }
                    out.insert(k.clone(), Value::Array(alts));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        let mut merged = Value::Object(out);
        for s in all_of {
            merge(&mut merged, s);
        }
        Ok(merged)
    }

    /// The schema a local `$ref` (`#/…`, a JSON pointer into the root) points to.
    fn resolve(&self, r: &str) -> Result<&'a Value, String> {
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(format!(
                "`{r}` is not a local reference (only `#/…` references can be inlined)"
            ));
        };
        // JSON pointers escape `/` and `~`; `$defs` names may be percent-encoded in URIs.
        let pointer = percent_decode(pointer);
        self.root
            .pointer(&pointer)
            .ok_or_else(|| format!("`{r}` points to nothing in the schema"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// Merges the `allOf` member `add` into `into`: properties are merged (recursively for a
/// property both declare), `required` lists joined, other keys kept where `into` has none.
fn merge(into: &mut Value, add: Value) {
    let (Value::Object(a), Value::Object(b)) = (into, add) else {
        return;
    };
    for (k, v) in b {
        match (k.as_str(), a.get_mut(&k)) {
            ("properties", Some(Value::Object(mine))) => {
                if let Value::Object(theirs) = v {
                    for (name, s) in theirs {
                        match mine.get_mut(&name) {
                            Some(existing) => merge(existing, s),
                            None => {
                                mine.insert(name, s);
                            }
                        }
                    }
                }
            }
            ("required", Some(Value::Array(mine))) => {
                for r in v.as_array().into_iter().flatten() {
                    if !mine.contains(r) {
                        mine.push(r.clone());
                    }
                }
            }
            (_, Some(_)) => {}
            (_, None) => {
                a.insert(k, v);
            }
        }
    }
}

fn is_null_schema(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("null")
}

/// A ref-free schema in Gemini's dialect.
fn dialect(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            // `"type": ["string", "null"]` → `"type": "string", "nullable": true`.
            "type" => match v {
                Value::Array(types) => {
                    let mut non_null = types.iter().filter(|t| t.as_str() != Some("null"));
                    if let Some(t) = non_null.next() {
                        out.insert("type".into(), t.clone());
                    }
                    if types.iter().any(|t| t.as_str() == Some("null")) {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), Value::Array(vec![v.clone()]));
            }
            // Gemini enums are strings; null is said by `nullable`.
            "enum" => {
                if let Value::Array(values) = v {
                    let kept: Vec<Value> =
                        values.iter().filter(|x| !x.is_null()).cloned().collect();
                    if kept.len() < values.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    out.insert(k.clone(), Value::Array(kept));
                }
            }
            "properties" => {
                if let Value::Object(props) = v {
                    let props = props
                        .iter()
                        .map(|(name, s)| (name.clone(), dialect(s)))
                        .collect();
                    out.insert(k.clone(), Value::Object(props));
                }
            }
            "items" => {
                out.insert(k.clone(), dialect(v));
            }
            // `anyOf [X, {"type": "null"}]` (Pydantic's `Optional[X]`) → X, nullable.
            "anyOf" | "oneOf" => {
                if let Value::Array(alts) = v {
                    let kept: Vec<&Value> = alts.iter().filter(|s| !is_null_schema(s)).collect();
                    if kept.len() < alts.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    match kept.as_slice() {
                        [] => {}
                        [only] => {
                            if let Value::Object(x) = dialect(only) {
                                for (xk, xv) in x {
                                    // The outer schema's own keys (description…) win.
                                    if !m.contains_key(&xk) {
                                        out.insert(xk, xv);
                                    }
                                }
                            }
                        }
                        many => {
                            out.insert(
                                "anyOf".into(),
                                Value::Array(many.iter().map(|s| dialect(s)).collect()),
                            );
                        }
                    }
                }
            }
            _ if SCHEMA_KEYS.contains(&k.as_str()) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(v: Value) -> Value {
        gemini_schema(&v, "tools").unwrap()
    }

    #[test]
    fn nested_pydantic_models_are_inlined() {
        // What Pydantic v2 emits for `class Order(BaseModel): customer: Customer;
        // items: list[Item]; note: Optional[str] = None; shipping: Optional[Address] = None`.
        let s = json!({
            "$defs": {
                "Address": {"properties": {"city": {"title": "City", "type": "string"}},
                            "required": ["city"], "title": "Address", "type": "object"},
                "Customer": {"properties": {"name": {"type": "string"},
                                            "address": {"$ref": "#/$defs/Address"}},
                             "required": ["name", "address"], "title": "Customer", "type": "object"},
                "Item": {"properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                         "required": ["sku", "qty"], "type": "object", "additionalProperties": false}
            },
            "properties": {
                "customer": {"$ref": "#/$defs/Customer", "description": "who ordered"},
                "items": {"items": {"$ref": "#/$defs/Item"}, "type": "array"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "shipping": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}
            },
            "required": ["customer", "items"], "title": "Order", "type": "object"
        });
        let v = g(s);
        let address = json!({"properties": {"city": {"title": "City", "type": "string"}},
                             "required": ["city"], "title": "Address", "type": "object"});
        assert_eq!(
            v["properties"]["customer"],
            json!({"properties": {"name": {"type": "string"}, "address": address},
                   "required": ["name", "address"], "title": "Customer", "type": "object",
                   "description": "who ordered"})
        );
        assert_eq!(
            v["properties"]["items"]["items"],
            json!({"properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                   "required": ["sku", "qty"], "type": "object"})
        );
        assert_eq!(
            v["properties"]["note"],
            json!({"type": "string", "nullable": true, "default": null})
        );
        let mut shipping = address.clone();
        shipping["nullable"] = json!(true);
        assert_eq!(v["properties"]["shipping"], shipping);
        assert!(v.get("$defs").is_none());
        assert!(!v.to_string().contains("$ref"));
    }

    #[test]
    fn definitions_and_all_of_are_merged() {
        let v = g(json!({
            "definitions": {"Base": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
            "allOf": [{"$ref": "#/definitions/Base"},
                      {"properties": {"name": {"type": "string"}}, "required": ["name"]}],
            "description": "a thing"
        }));
        assert_eq!(
            v,
            json!({"type": "object", "description": "a thing",
                   "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
                   "required": ["id", "name"]})
        );
        // zod-to-json-schema's single-member allOf around a reference.
        let v = g(json!({"type": "object", "properties": {
            "when": {"allOf": [{"$ref": "#/$defs/Date"}], "description": "d"}},
            "$defs": {"Date": {"type": "string", "format": "date"}}}));
        assert_eq!(
            v["properties"]["when"],
            json!({"type": "string", "format": "date", "description": "d"})
        );
    }

    #[test]
    fn recursive_schemas_are_a_clear_400() {
        let tree = json!({"$defs": {"Node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
            "$ref": "#/$defs/Node"});
        let e = gemini_schema(&tree, "response_format").unwrap_err();
        assert_eq!((e.status, e.kind), (400, "invalid_request_error"));
        assert_eq!(e.param, Some("response_format"));
        assert!(
            e.message.contains("recursive") && e.message.contains("#/$defs/Node"),
            "{}",
            e.message
        );
        let e = gemini_schema(&json!({"$ref": "https://x.test/s.json"}), "tools").unwrap_err();
        assert!(e.message.contains("not a local reference"), "{}", e.message);
        let e = gemini_schema(&json!({"$ref": "#/$defs/Nope"}), "tools").unwrap_err();
        assert!(e.message.contains("points to nothing"), "{}", e.message);
    }

    #[test]
    fn reference_blow_up_is_bounded() {
        // Each level refers to the next twice: 2^20 schemas once inlined.
        let mut defs = Map::new();
        for i in 0..20 {
            let next = format!("#/$defs/L{}", i + 1);
            defs.insert(
                format!("L{i}"),
                json!({"type": "object", "properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
            );
        }
        defs.insert("L20".into(), json!({"type": "string"}));
        let s = json!({"$defs": defs, "$ref": "#/$defs/L0"});
        let e = gemini_schema(&s, "tools").unwrap_err();
        assert!(e.message.contains("more than"), "{}", e.message);
    }

    #[test]
    fn dialect_keeps_gemini_keys_only() {
        let v = g(
            json!({"type": "object", "additionalProperties": false, "$schema": "x",
            "properties": {"city": {"type": ["string", "null"]}, "k": {"const": "x"},
                           "e": {"enum": ["a", null]}, "o": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
            "required": ["city"]}),
        );
        assert_eq!(
            v,
            json!({"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "nullable": true}, "k": {"enum": ["x"]},
                "e": {"enum": ["a"], "nullable": true},
                "o": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})
        );
    }
}
