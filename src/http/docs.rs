//! `GET /docs`: the API reference, rendered in the browser by Redoc from
//! the document this server serves (`/api/v1/openapi.json`). Redoc's
//! standalone bundle (MIT, from the npm registry: `assets/redoc/README.md`)
//! is compiled into the binary: no CDN, nothing to build or fetch at run
//! time.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::{header, header::HeaderValue, http::request::Parts};

use super::{
    openapi::{conditional_as, etag_of},
    ApiResult,
};

const PAGE: &str = include_str!("../../assets/docs.html");
const REDOC: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

static PAGE_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(PAGE.as_bytes()));
static REDOC_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(REDOC));

/// What the page may load: this server's script and document, Redoc's
/// search worker (a blob) and the inline styles it generates; nothing from
/// elsewhere, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; worker-src blob:; \
     style-src 'unsafe-inline'; img-src 'self' data:; font-src data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn page(req: &Parts) -> ApiResult {
    let mut response = conditional_as(
        req,
        PAGE_ETAG.clone(),
        "public, max-age=300",
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    )?;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    Ok(response)
}

pub fn redoc(req: &Parts) -> ApiResult {
    conditional_as(
        req,
        REDOC_ETAG.clone(),
        "public, max-age=86400",
        "text/javascript; charset=utf-8",
        Bytes::from_static(REDOC),
    )
}
