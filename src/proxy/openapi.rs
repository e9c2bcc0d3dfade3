//! `GET /openapi.json`: the gateway's own API as an OpenAPI 3.1 document, generated from the
//! endpoint table ([`super::endpoint::ENDPOINTS`]) so it cannot drift from what is served.
//! Each table path is an OpenAPI path (`{id}` segments become path parameters, a prefix such
//! as `/providers/` ends in a `{path}` parameter holding the rest); each method it answers is
//! an operation with the entry's summary, its request content types, and its security (the
//! gateway key, as a bearer token or `x-api-key`) when the entry is keyed.

use super::endpoint::{is_param, Endpoint, Envelope, Methods, ENDPOINTS};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// The OpenAPI path of a table path: the same, except that a prefix (ending in `/`) gets a
/// final `{path}` parameter.
pub fn openapi_path(table_path: &str) -> String {
    if table_path.ends_with('/') {
        format!("{table_path}{{path}}")
    } else {
        table_path.to_string()
    }
}

/// Every path of the endpoint table, as the document names them.
pub fn paths() -> Vec<String> {
    ENDPOINTS
        .iter()
        .flat_map(|e| e.paths.iter().map(|p| openapi_path(p)))
        .collect()
}

/// The document's bytes, built once.
pub fn body() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(document().to_string()))
        .clone()
}

/// The OpenAPI 3.1 document of the endpoint table.
pub fn document() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        for (i, p) in e.paths.iter().enumerate() {
            // Aliases (`/chat/completions` for `/v1/chat/completions`) get their own ids.
            let id = match i {
                0 => e.label.to_string(),
                _ => format!("{}_{i}", e.label),
            };
            paths.insert(openapi_path(p), path_item(e, p, &id));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "freeway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An OpenAI-compatible AI gateway. Model endpoints route each request \
                            to a capable model and fail over between providers.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "The gateway key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "The gateway key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "description": "OpenAI's error envelope",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["message", "type"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        }}},
                },
                "AnthropicError": {
                    "type": "object",
                    "description": "Anthropic's error envelope",
                    "required": ["type", "error"],
                    "properties": {
                        "type": {"const": "error"},
                        "error": {"type": "object", "required": ["type", "message"],
                            "properties": {"type": {"type": "string"},
                                           "message": {"type": "string"}}},
                    },
                },
            },
        },
    })
}

/// The operations of one path of `e`.
fn path_item(e: &Endpoint, table_path: &str, id: &str) -> Value {
    let mut parameters: Vec<Value> = table_path
        .split('/')
        .filter(|s| is_param(s))
        .map(|s| {
            json!({"name": &s[1..s.len() - 1], "in": "path", "required": true,
                   "schema": {"type": "string"}})
        })
        .collect();
    if table_path.ends_with('/') {
        parameters.push(json!({
            "name": "path", "in": "path", "required": true,
            "description": "The rest of the path, slashes included",
            "schema": {"type": "string"},
        }));
    }
    let methods: &[&str] = match e.methods {
        Methods::Post => &["post"],
        Methods::Get => &["get", "head"],
        Methods::Any => &["get", "post", "put", "patch", "delete"],
    };
    let mut item = Map::new();
    for m in methods {
        item.insert(m.to_string(), operation(e, m, &format!("{id}_{m}")));
    }
    if !parameters.is_empty() {
        item.insert("parameters".into(), Value::Array(parameters));
    }
    Value::Object(item)
}

fn operation(e: &Endpoint, method: &str, id: &str) -> Value {
    let error = match e.errors {
        Envelope::OpenAi => "#/components/schemas/Error",
        Envelope::Anthropic => "#/components/schemas/AnthropicError",
    };
    let mut op = json!({
        "operationId": id,
        "summary": e.summary,
        "tags": [if e.model { "model endpoints" } else { "gateway" }],
        // An empty list: no key needed.
        "security": if e.keyed {
            json!([{"bearerAuth": []}, {"apiKey": []}])
        } else {
            json!([])
        },
        "responses": {
            "200": {"description": "Success"},
            "default": {"description": "An error, in the endpoint's envelope",
                        "content": {"application/json": {"schema": {"$ref": error}}}},
        },
    });
    if !e.body_types.is_empty() && method != "get" && method != "head" && method != "delete" {
        let content: Map<String, Value> = e
            .body_types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": {}})))
            .collect();
        op["requestBody"] = json!({"required": true, "content": content});
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_path_is_a_document_path_with_its_parameters() {
        let doc = document();
        let listed: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        for p in paths() {
            assert!(listed.contains(&&p), "{p} missing");
        }
        assert_eq!(listed.len(), paths().len());
        let file = &doc["paths"]["/v1/images/files/{id}"];
        assert_eq!(file["parameters"][0]["name"], "id");
        assert_eq!(file["get"]["security"], json!([]));
        let chat = &doc["paths"]["/v1/chat/completions"]["post"];
        assert!(chat["requestBody"]["content"]["application/json"].is_object());
        assert_eq!(chat["security"][0], json!({"bearerAuth": []}));
        assert!(doc["paths"]["/providers/{path}"]["put"].is_object());
    }
}
