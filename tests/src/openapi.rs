//! A strict reading of an OpenAPI 3.1 document's schemas against real answers: every field
//! an answer has must be described (the derived document would not be worth much if the
//! serialized types could grow a field it does not show), every required one present, and
//! each value of the type, format-free, the schema says.

use serde_json::Value;

/// Whether `v` is what `schema` (of `doc`) describes; the error names the first difference.
pub fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: {r} is not in the document"));
        }
        return conforms(doc, target, v, &format!("{at}<{name}>"));
    }
    if let Some(parts) = schema.get("oneOf").and_then(Value::as_array) {
        let errs: Vec<String> = parts.iter().filter_map(|p| conforms(doc, p, v, at).err()).collect();
        return if errs.len() < parts.len() { Ok(()) } else { Err(errs.join(" | ")) };
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        // One object described in parts: merge them, then check as one.
        let mut merged = serde_json::json!({ "type": "object", "properties": {}, "required": [] });
        for p in parts {
            let p = resolve(doc, p);
            if p.get("oneOf").is_some() {
                // A tagged enum flattened in: the variant that matches supplies its fields.
                let variant = p["oneOf"].as_array().unwrap().iter().find(|o| {
                    o["properties"].as_object().is_some_and(|props| props.iter().any(|(k, s)| s.get("enum").is_some_and(|e| e.as_array().unwrap().contains(&v[k]))))
                });
                let Some(variant) = variant else { return Err(format!("{at}: no variant of {p} matches {v}")) };
                merge_into(&mut merged, variant);
            } else {
                merge_into(&mut merged, &p);
            }
        }
        return conforms(doc, &merged, v, at);
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {e:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()), // any value
    };
    let fits = |t: &str| match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    };
    if !types.iter().any(|t| fits(t)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        Value::Object(fields) => {
            let props = schema["properties"].as_object();
            for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !fields.contains_key(r) {
                    return Err(format!("{at}: required field {r} missing"));
                }
            }
            for (k, fv) in fields {
                match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                    (Some(s), _) => conforms(doc, s, fv, &format!("{at}.{k}"))?,
                    (None, Some(extra)) if extra.is_object() => conforms(doc, extra, fv, &format!("{at}.{k}"))?,
                    (None, Some(Value::Bool(true))) => {}
                    _ => return Err(format!("{at}: field {k} is not in the document")),
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn resolve(doc: &Value, s: &Value) -> Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]),
        None => s.clone(),
    }
}

fn merge_into(merged: &mut Value, part: &Value) {
    if let Some(props) = part["properties"].as_object() {
        for (k, s) in props {
            merged["properties"][k] = s.clone();
        }
    }
    if let Some(req) = part["required"].as_array() {
        merged["required"].as_array_mut().unwrap().extend(req.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::conforms;
    use serde_json::json;

    #[test]
    fn an_undescribed_field_a_missing_one_and_a_wrong_type_are_found() {
        let doc = json!({ "components": { "schemas": {
            "A": { "type": "object", "required": ["x"], "properties": { "x": { "type": "integer" }, "y": { "type": ["string", "null"] } } },
        } } });
        let list = json!({ "type": "array", "items": { "$ref": "#/components/schemas/A" } });
        assert!(conforms(&doc, &list, &json!([{ "x": 1, "y": null }, { "x": 2 }]), "").is_ok());
        assert!(conforms(&doc, &list, &json!([{ "x": 1, "z": 3 }]), "").unwrap_err().contains("field z"));
        assert!(conforms(&doc, &list, &json!([{ "y": "s" }]), "").unwrap_err().contains("required field x"));
        assert!(conforms(&doc, &list, &json!([{ "x": "1" }]), "").is_err());
    }
}
