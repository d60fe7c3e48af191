//! `GET /api/v1/openapi.json`: the API's OpenAPI 3.1 document.
//!
//! The document lives in the repository (`docs/openapi.json`) and is compiled
//! into the binary, so a server always serves the contract it was built
//! with. `tests/api/openapi.rs` checks that its paths are exactly the
//! router's routes; `scripts/schemathesis.sh` checks the answers against it.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::{header, header::HeaderValue, http::request::Parts, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::ApiResult;
use crate::domain::hex;

/// The document, byte for byte as in the repository.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// Clients (Swagger UI, generators) may reuse their copy for this long; the
/// ETag makes asking again afterwards cost a 304.
const CACHE_CONTROL: &str = "public, max-age=300";

/// A strong validator derived from the content: it changes exactly when the
/// document does, also across servers built from the same source.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(DOCUMENT.as_bytes()));

/// A strong validator of `content`: a quoted prefix of its SHA-256.
pub fn etag_of(content: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(content);
    HeaderValue::from_str(&format!("\"{}\"", hex(&digest[..16])))
        .expect("a quoted hex string is a valid header value")
}

pub fn document(req: &Parts) -> ApiResult {
    conditional(
        req,
        ETAG.clone(),
        CACHE_CONTROL,
        Bytes::from_static(DOCUMENT.as_bytes()),
    )
}

/// A JSON body with its validator: 304 without the body when the client's
/// `If-None-Match` names `etag`, 200 with it otherwise.
pub fn conditional(
    req: &Parts,
    etag: HeaderValue,
    cache_control: &'static str,
    body: Bytes,
) -> ApiResult {
    conditional_as(req, etag, cache_control, "application/json", body)
}

/// [`conditional`] for a body of `content_type`.
pub fn conditional_as(
    req: &Parts,
    etag: HeaderValue,
    cache_control: &'static str,
    content_type: &'static str,
    body: Bytes,
) -> ApiResult {
    let fresh = req
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches_etag(v, &etag));
    let builder = Response::builder()
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, cache_control);
    let response = if fresh {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(super::Body::default())
    } else {
        builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(super::Body::from(body))
    };
    Ok(response.expect("static headers are valid"))
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): a list of
/// entity tags, `W/` prefixes ignored, or `*`.
fn matches_etag(value: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let etag = etag.as_bytes();
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate).as_bytes() == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_json_of_openapi_3_1() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1."), "openapi = {version:?}");
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let etag = HeaderValue::from_static("\"abc\"");
        let matches = |v: &'static str| matches_etag(&HeaderValue::from_static(v), &etag);
        assert!(matches("\"abc\""));
        assert!(matches("W/\"abc\""));
        assert!(matches("\"x\", \"abc\""));
        assert!(matches("*"));
        assert!(!matches("\"abcd\""));
        assert!(!matches("abc"));
        assert!(!matches(""));
    }
}
