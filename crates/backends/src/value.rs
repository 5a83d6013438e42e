//! Fetched values: held in `SecretString` from arrival until written, and the
//! `#field` picking that both backends share.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use keyhole_contract::plan::PlanItem;

use crate::error::{Error, FieldError, StoreRef};

/// Item name -> value, for writing and for templates.
pub type Values = BTreeMap<String, SecretString>;

/// Picks `field` out of a JSON object. A string field gives its text; any other
/// JSON value gives its compact JSON.
pub fn pick_field(raw: &SecretString, field: &str) -> Result<SecretString, FieldError> {
    let parsed: serde_json::Value = serde_json::from_str(raw.expose_secret()).map_err(|e| FieldError::NotJson {
        field: field.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    let serde_json::Value::Object(mut map) = parsed else {
        return Err(FieldError::NotObject { field: field.to_owned() });
    };
    match map.remove(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretString::from(s)),
        Some(other) => Ok(SecretString::from(other.to_string())),
        None => Err(FieldError::NoField { field: field.to_owned() }),
    }
}

/// The whole value, or one field of it.
pub fn select(raw: &SecretString, field: Option<&str>) -> Result<SecretString, FieldError> {
    match field {
        None => Ok(raw.clone()),
        Some(f) => pick_field(raw, f),
    }
}

/// The value one item asked for (the whole of `raw`, or its `#field`); a failure
/// names the item's annotation, the store and the reference, never the value.
pub fn item_value(
    item: &PlanItem,
    store: &StoreRef,
    reference: &impl std::fmt::Display,
    raw: &SecretString,
    field: Option<&str>,
) -> Result<SecretString, Error> {
    select(raw, field).map_err(|reason| Error::Field {
        annotation: item.annotation(),
        store: store.clone(),
        reference: reference.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn picks_strings_as_text_and_others_as_json() {
        let raw = s(r#"{"user": "app", "port": 5432, "opts": {"ssl": true}}"#);
        assert_eq!(pick_field(&raw, "user").unwrap().expose_secret(), "app");
        assert_eq!(pick_field(&raw, "port").unwrap().expose_secret(), "5432");
        assert_eq!(pick_field(&raw, "opts").unwrap().expose_secret(), r#"{"ssl":true}"#);
        assert_eq!(select(&raw, None).unwrap().expose_secret(), raw.expose_secret());
    }

    #[test]
    fn errors_never_carry_the_value() {
        let secret = "hunter2-do-not-print";
        for (raw, want) in [
            (secret.to_owned(), "is not JSON"),
            (format!("[\"{secret}\"]"), "not an object"),
            (format!("{{\"other\": \"{secret}\"}}"), "no field #pw"),
        ] {
            let err = pick_field(&s(&raw), "pw").unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains(secret), "{text}");
        }
    }
}
