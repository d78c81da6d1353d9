//! OpenAI's model list: `GET /v1/models` and `GET /v1/models/{id}`.

use serde::{Deserialize, Serialize};

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn new(data: Vec<ModelObject>) -> Self {
        ModelList {
            object: "list".to_string(),
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The context a request gets: the loaded one, else the model's own maximum. Not in
    /// OpenAI's shape; Cursor and Android Studio read it (LM Studio's open #2139).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
}

impl ModelObject {
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        ModelObject {
            id: id.into(),
            object: "model".to_string(),
            created,
            owned_by: owned_by.into(),
            context_length: None,
        }
    }
}
