//! `GET /docs`: the API reference, rendered in the browser by Redoc from
//! the document this server serves (`/api/v1/openapi.json`). Redoc's
//! standalone bundle (MIT, from the npm registry: `assets/redoc/README.md`)
//! is compiled into the binary: no CDN, nothing to build or fetch at run
//! time.

use hyper::http::request::Parts;

use super::{embedded::Embedded, ApiResult};

/// What the page may load: this server's script and document, Redoc's
/// search worker (a blob) and the inline styles it generates; nothing from
/// elsewhere, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; worker-src blob:; \
     style-src 'unsafe-inline'; img-src 'self' data:; font-src data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static PAGE: Embedded = Embedded::page(
    include_bytes!("../../assets/docs.html"),
    "public, max-age=300",
    PAGE_POLICY,
);
static REDOC: Embedded = Embedded::file(
    include_bytes!("../../assets/redoc/redoc.standalone.js"),
    "text/javascript; charset=utf-8",
    "public, max-age=86400",
);

pub fn page(req: &Parts) -> ApiResult {
    PAGE.serve(req)
}

pub fn redoc(req: &Parts) -> ApiResult {
    REDOC.serve(req)
}
