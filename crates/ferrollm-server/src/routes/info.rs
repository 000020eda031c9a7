//! Read-only endpoints: models, health, version, metrics.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use crate::errors::ApiError;
use crate::protocol::models::{ModelCard, ModelList, VersionResponse};
use crate::state::AppState;

fn card(state: &AppState) -> ModelCard {
    let info = state.engine.info();
    ModelCard {
        id: state.models.served.clone(),
        object: "model",
        created: state.started,
        owned_by: "ferrollm",
        root: info.model_name.clone(),
        parent: None,
        max_model_len: info.max_model_len,
    }
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: vec![card(&state)] })
}

pub async fn get_model(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    state.models.resolve(Some(&id))?;
    Ok(Json(card(&state)))
}

/// 200 while the engine core runs, 503 once it has stopped, so a supervisor can restart us.
pub async fn health(State(state): State<AppState>) -> StatusCode {
    if state.engine.is_alive() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse { version: env!("CARGO_PKG_VERSION") })
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.engine.metrics().render_prometheus())
}
