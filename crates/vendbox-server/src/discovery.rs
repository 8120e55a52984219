//! Discovery for agents, x402's Bazaar: every x402 402 declares what its route takes and
//! answers (v2: `extensions.bazaar` in `PAYMENT-REQUIRED`, its `info` an example request and
//! answer and its `schema` the JSON Schema they follow; v1: `outputSchema` on each requirement),
//! and `GET /discovery/resources` lists vendbox's paid resources in the facilitators' discovery
//! shape (`x402Version`, `items`, `pagination`), each item the route's own 402 terms.
//!
//! The declarations are read from the OpenAPI document once at start-up (the route's request
//! body or query parameters, and its 2xx JSON answer), so they cannot drift from the router; the
//! listing asks the router itself for each resource's 402 (in process), so its prices are the
//! ones a buyer is asked.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;
use vendbox_core::{ActionRule, Catalog, DurationRule, OfferKind};
use vendbox_pay::wire;
use vendbox_service::LiveCatalog;

use crate::error::ApiError;

/// The route of the listing.
pub const RESOURCES: &str = "/discovery/resources";

/// The most of a 402's body read to add its declaration.
const MAX_402_BODY: usize = 64 * 1024;

/// How deep `$ref`s are followed when a schema is inlined.
const MAX_DEPTH: usize = 8;

/// The Bazaar declaration of each paid operation, by method and route template.
#[derive(Debug, Default)]
pub struct Declarations {
    /// `(method, template)` → the v2 extension and the v1 `outputSchema`.
    by_route: HashMap<(Method, String), Declaration>,
}

/// One operation's declaration.
#[derive(Debug, Clone)]
struct Declaration {
    /// `extensions.bazaar` of the v2 402.
    bazaar: Value,
    /// `outputSchema` of each v1 requirement.
    output_schema: Value,
}

impl Declarations {
    /// The declarations of every operation of `doc` (the OpenAPI document, as JSON) that can
    /// answer 402.
    pub fn from_openapi(doc: &Value) -> Declarations {
        let mut by_route = HashMap::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                if operation["responses"].get("402").is_none() {
                    continue;
                }
                let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else { continue };
                let declaration = declare(doc, &method, path, operation);
                by_route.insert((method, path.clone()), declaration);
            }
        }
        Declarations { by_route }
    }

    /// The v2 extension for `method` on `template`, if it is paid.
    pub fn bazaar(&self, method: &Method, template: &str) -> Option<&Value> {
        self.by_route.get(&(method.clone(), template.to_owned())).map(|d| &d.bazaar)
    }
}

/// The declaration of one paid operation.
fn declare(doc: &Value, method: &Method, path: &str, operation: &Value) -> Declaration {
    let body_method = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    let output = operation["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .find(|(status, _)| status.starts_with('2'))
        .and_then(|(_, r)| r["content"]["application/json"].get("schema"))
        .map_or_else(|| json!({ "type": "object" }), |s| inline(doc, s, 0));
    let (input_key, input_schema) = if body_method {
        let schema = operation["requestBody"]["content"]["application/json"]
            .get("schema")
            .map_or_else(|| json!({ "type": "object", "properties": {} }), |s| inline(doc, s, 0));
        ("body", object_schema(schema))
    } else {
        ("queryParams", query_schema(doc, operation))
    };
    let mut input_info = json!({ "type": "http", "method": method.as_str() });
    let mut input_props = json!({
        "type": { "type": "string", "const": "http" },
        "method": { "type": "string", "enum": [method.as_str()] },
    });
    let mut required = vec!["type", "method"];
    if body_method {
        input_info["bodyType"] = json!("json");
        input_props["bodyType"] = json!({ "type": "string", "enum": ["json", "form-data", "text"] });
        required.extend(["bodyType", "body"]);
    }
    input_info[input_key] = example(&input_schema);
    input_props[input_key] = input_schema.clone();
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "input": { "type": "object", "properties": input_props, "required": required, "additionalProperties": false },
            "output": {
                "type": "object",
                "properties": { "type": { "type": "string" }, "example": output.clone() },
                "required": ["type"],
            },
        },
        "required": ["input"],
    });
    let mut bazaar = json!({
        "info": { "input": input_info, "output": { "type": "json", "example": example(&output) } },
        "schema": schema,
    });
    if path.contains('{') {
        bazaar["routeTemplate"] = json!(colon_template(path));
    }
    let mut v1_input = json!({ "type": "http", "method": method.as_str(), "discoverable": true });
    if body_method {
        v1_input["bodyType"] = json!("json");
        v1_input["bodyFields"] = input_schema["properties"].clone();
    } else {
        v1_input["queryParams"] = input_schema["properties"].clone();
    }
    Declaration { bazaar, output_schema: json!({ "input": v1_input, "output": output }) }
}

/// `/v1/boxes/{id}/extend` as Bazaar writes templates: `/v1/boxes/:id/extend`.
fn colon_template(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => format!(":{}", name.trim_start_matches('*')),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// An operation's query parameters as one object schema.
fn query_schema(doc: &Value, operation: &Value) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for p in operation["parameters"].as_array().into_iter().flatten() {
        if p["in"] != "query" {
            continue;
        }
        let Some(name) = p["name"].as_str() else { continue };
        properties.insert(name.to_owned(), p.get("schema").map_or_else(|| json!({}), |s| inline(doc, s, 0)));
        if p["required"] == true {
            required.push(name.to_owned());
        }
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

/// `schema` as an object schema (a body that may be absent is `T | null` in the document).
fn object_schema(schema: Value) -> Value {
    if schema["type"] == "object" {
        return schema;
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(object) = schema[key].as_array().into_iter().flatten().find(|s| s["type"] == "object") {
            return object.clone();
        }
    }
    json!({ "type": "object", "properties": {} })
}

/// `schema` with every `#/components/schemas/…` reference replaced by what it names, and
/// without descriptions, examples and patterns (the declaration travels in headers, payers echo
/// it, and its own examples must pass it).
fn inline(doc: &Value, schema: &Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return json!({});
    }
    match schema {
        Value::Object(map) => {
            if let Some(target) = map.get("$ref").and_then(Value::as_str) {
                let name = target.trim_start_matches("#/components/schemas/");
                return doc["components"]["schemas"]
                    .get(name)
                    .map_or_else(|| json!({}), |s| inline(doc, s, depth + 1));
            }
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "description" | "example" | "examples" | "title" | "pattern")
                })
                .map(|(k, v)| {
                    let v = if k == "properties" {
                        Value::Object(
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(n, s)| (n.clone(), inline(doc, s, depth + 1)))
                                .collect(),
                        )
                    } else {
                        inline(doc, v, depth + 1)
                    };
                    (k.clone(), v)
                })
                .collect::<Map<_, _>>()
                .into()
        }
        Value::Array(items) => items.iter().map(|v| inline(doc, v, depth + 1)).collect(),
        other => other.clone(),
    }
}

/// A value that `schema` accepts: its required fields, each the simplest value of its type.
fn example(schema: &Value) -> Value {
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(parts) = schema["allOf"].as_array() {
        // Every part must hold: the parts' objects, merged.
        let mut merged = Map::new();
        for part in parts {
            if let Value::Object(fields) = example(part) {
                merged.extend(fields);
            }
        }
        return Value::Object(merged);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(first) = schema[key].as_array().and_then(|e| e.first()) {
            return example(first);
        }
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => {
            kinds.iter().find(|k| *k == "null").or_else(|| kinds.first()).cloned().unwrap_or(Value::Null)
        }
        other => other.clone(),
    };
    match kind.as_str() {
        Some("null") => Value::Null,
        Some("string") => json!(""),
        Some("boolean") => json!(false),
        Some("integer" | "number") => schema.get("minimum").cloned().unwrap_or(json!(0)),
        Some("array") => {
            let least = schema["minItems"].as_u64().unwrap_or(0);
            Value::Array((0..least).map(|_| example(&schema["items"])).collect())
        }
        _ => {
            let mut object = Map::new();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                object.insert(name.to_owned(), example(&schema["properties"][name]));
            }
            Value::Object(object)
        }
    }
}

/// Middleware: a 402 with x402 terms from a declared route gets the route's declaration.
pub async fn declare_on_402(
    State(declarations): State<Arc<Declarations>>,
    request: Request,
    next: Next,
) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map(|p| (request.method().clone(), p.as_str().to_owned()));
    let response = next.run(request).await;
    if response.status() != StatusCode::PAYMENT_REQUIRED {
        return response;
    }
    let Some(declaration) = route.and_then(|r| declarations.by_route.get(&r)).cloned() else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    for name in [wire::PAYMENT_REQUIRED, wire::X_PAYMENT_REQUIRED] {
        let Some(decoded) = parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| wire::decode_header::<Value>(v).ok())
        else {
            continue;
        };
        if let Ok(value) =
            HeaderValue::from_str(&wire::encode_header(&with_declaration(decoded, &declaration)))
        {
            parts.headers.insert(name, value);
        }
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_402_BODY).await else {
        return ApiError::internal(&"a 402's body could not be read").into_response();
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v1) if v1["x402Version"] == 1 => {
            let body =
                serde_json::to_vec(&with_declaration(v1, &declaration)).unwrap_or_else(|_| bytes.to_vec());
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(body)
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// A 402's terms (v1 or v2) with `declaration` added where its version puts it.
fn with_declaration(mut terms: Value, declaration: &Declaration) -> Value {
    match terms["x402Version"].as_u64() {
        Some(2) => {
            if !terms["extensions"].is_object() {
                terms["extensions"] = json!({});
            }
            terms["extensions"]["bazaar"] = declaration.bazaar.clone();
        }
        Some(1) => {
            for accept in terms["accepts"].as_array_mut().into_iter().flatten() {
                if accept.get("outputSchema").is_none_or(Value::is_null) {
                    accept["outputSchema"] = declaration.output_schema.clone();
                }
            }
        }
        _ => {}
    }
    terms
}

/// The filters and page of a listing, as the Bazaar clients send them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// `http` (vendbox's only kind; `mcp` lists nothing).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Only resources with a requirement on this network (`eip155:84532`).
    pub network: Option<String>,
    /// Only resources with a requirement of this scheme (`exact`).
    pub scheme: Option<String>,
    /// Only resources paying this address.
    pub pay_to: Option<String>,
    /// Items per page (1 to 100, 100 by default).
    pub limit: Option<usize>,
    /// The first item's index.
    pub offset: Option<usize>,
    /// Only resources declaring this extension (`bazaar`).
    pub extensions: Option<String>,
}

/// `GET /discovery/resources` over `api` (the rest of the router), listing what `catalog` sells
/// when asked.
pub fn route(api: Router, catalog: LiveCatalog) -> Router {
    Router::new().route(
        RESOURCES,
        get(move |Query(query): Query<ListQuery>| {
            let (api, catalog) = (api.clone(), catalog.now());
            async move { Json(list(&api, &catalog, &query).await) }
        }),
    )
}

/// The paid requests vendbox lists: one per offer sold through the native API, at its least
/// purchase, and the paid catalog call.
fn probes(catalog: &Catalog) -> Vec<(Method, String, Option<Value>)> {
    let mut probes = Vec::new();
    for offer in &catalog.offers {
        match offer.kind {
            OfferKind::Sandbox | OfferKind::Machine if offer.available => {
                let mut body = json!({ "offer": offer.id.as_str() });
                if let DurationRule::Range { min_minutes, .. } = offer.duration {
                    body["minutes"] = json!(min_minutes);
                }
                if let ActionRule::Range { min, .. } = offer.actions {
                    body["actions"] = json!(min);
                }
                probes.push((Method::POST, "/v1/boxes".to_owned(), Some(body)));
            }
            OfferKind::Lock
                if offer.labels.get("operation").map(String::as_str)
                    == Some(vendbox_service::locks::ACQUIRE) =>
            {
                probes.push((Method::POST, "/v1/locks/example-key".to_owned(), Some(json!({}))));
            }
            OfferKind::Discovery if offer.surface == "vpsagent" => {
                probes.push((Method::GET, "/catalog".to_owned(), None));
            }
            _ => {}
        }
    }
    probes
}

/// The listing: each probe's 402 (v2 terms, with their declaration) as a discovery item.
async fn list(api: &Router, catalog: &Catalog, query: &ListQuery) -> Value {
    let mut items = Vec::new();
    if query.kind.as_deref().is_none_or(|k| k == "http") {
        for (method, path, body) in probes(catalog) {
            if let Some(item) = item(api, method, &path, body).await {
                items.push(item);
            }
        }
    }
    items.retain(|item| {
        let accepts = item["accepts"].as_array().cloned().unwrap_or_default();
        let any = |field: &str, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|w| {
                accepts.iter().any(|a| a[field].as_str().is_some_and(|v| v.eq_ignore_ascii_case(w)))
            })
        };
        any("network", &query.network)
            && any("scheme", &query.scheme)
            && any("payTo", &query.pay_to)
            && query.extensions.as_deref().is_none_or(|e| item["extensions"].get(e).is_some())
    });
    let total = items.len();
    let limit = query.limit.unwrap_or(100).clamp(1, 100);
    let offset = query.offset.unwrap_or(0).min(total);
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    json!({
        "x402Version": 2,
        "items": page,
        "pagination": { "limit": limit, "offset": offset, "total": total },
    })
}

/// The discovery item of one paid request: the 402 it answers unpaid, as an item.
async fn item(api: &Router, method: Method, path: &str, body: Option<Value>) -> Option<Value> {
    let request = Request::builder().method(method).uri(path);
    let request = match body {
        Some(body) => {
            request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string()))
        }
        None => request.body(Body::empty()),
    }
    .ok()?;
    let response = api.clone().oneshot(request).await.ok()?;
    if response.status() != StatusCode::PAYMENT_REQUIRED {
        return None;
    }
    let terms: Value =
        wire::decode_header(response.headers().get(wire::PAYMENT_REQUIRED)?.to_str().ok()?).ok()?;
    Some(json!({
        "resource": terms["resource"]["url"],
        "type": "http",
        "x402Version": 2,
        "accepts": terms["accepts"],
        "lastUpdated": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "description": terms["resource"]["description"],
        "mimeType": terms["resource"]["mimeType"],
        "serviceName": "vendbox",
        "extensions": terms["extensions"],
    }))
}
