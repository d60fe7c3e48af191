//! `GET /app`: the service's own web page (`assets/app.html`, `app.js`,
//! `app.css`): a student view (log in, browse, register, drop, results and
//! waitlist positions live from `/api/v1/students/me/events`) and an
//! operator view for admins. Plain files compiled into the binary: nothing
//! to build or fetch at run time, nothing from elsewhere.

use std::sync::LazyLock;

use bytes::Bytes;
use hyper::{header, header::HeaderValue, http::request::Parts};

use super::{
    openapi::{conditional_as, etag_of},
    ApiResult,
};

const PAGE: &str = include_str!("../../assets/app.html");
const SCRIPT: &str = include_str!("../../assets/app.js");
const STYLE: &str = include_str!("../../assets/app.css");

static PAGE_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(PAGE.as_bytes()));
static SCRIPT_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(SCRIPT.as_bytes()));
static STYLE_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| etag_of(STYLE.as_bytes()));

/// This server's script, style and API only; no inline code, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn page(req: &Parts) -> ApiResult {
    let mut response = conditional_as(
        req,
        PAGE_ETAG.clone(),
        "no-cache",
        "text/html; charset=utf-8",
        Bytes::from_static(PAGE.as_bytes()),
    )?;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    Ok(response)
}

pub fn script(req: &Parts) -> ApiResult {
    conditional_as(
        req,
        SCRIPT_ETAG.clone(),
        "no-cache",
        "text/javascript; charset=utf-8",
        Bytes::from_static(SCRIPT.as_bytes()),
    )
}

pub fn style(req: &Parts) -> ApiResult {
    conditional_as(
        req,
        STYLE_ETAG.clone(),
        "no-cache",
        "text/css; charset=utf-8",
        Bytes::from_static(STYLE.as_bytes()),
    )
}
