//! [`JsonText`]: a JSON document carried as its text inside postcard payloads.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON document kept as its text (postcard cannot carry self-describing values); checked to be
/// valid JSON when built, shown as JSON (not as a string) in JSON output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// Wraps a JSON value.
    pub fn from_value(value: &serde_json::Value) -> JsonText {
        JsonText(value.to_string())
    }

    /// Parses and keeps `text`.
    ///
    /// # Errors
    /// If `text` is not valid JSON.
    pub fn parse(text: &str) -> Result<JsonText, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        Ok(JsonText::from_value(&value))
    }

    /// JSON `null` (what an erased JSON field holds).
    pub fn null() -> JsonText {
        JsonText("null".to_owned())
    }

    /// The JSON text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The JSON value.
    pub fn value(&self) -> serde_json::Value {
        // Built only from valid JSON (or decoded from a frame whose CRC vouched for it).
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.value().serialize(serializer)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let value = serde_json::Value::deserialize(deserializer)?;
            Ok(JsonText::from_value(&value))
        } else {
            let text = String::deserialize(deserializer)?;
            JsonText::parse(&text).map_err(serde::de::Error::custom)
        }
    }
}
