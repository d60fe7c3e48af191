//! `GET /app`: the service's own web page (`assets/app.html`, `app.js`,
//! `app.css`): a student view (log in, browse, register, drop, results and
//! waitlist positions live from `/api/v1/students/me/events`) and an
//! operator view for admins. Plain files compiled into the binary: nothing
//! to build or fetch at run time, nothing from elsewhere.

use hyper::http::request::Parts;

use super::{embedded::Embedded, ApiResult};

/// This server's script, style and API only; no inline code, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

static PAGE: Embedded = Embedded::page(
    include_bytes!("../../assets/app.html"),
    "no-cache",
    PAGE_POLICY,
);
static SCRIPT: Embedded = Embedded::file(
    include_bytes!("../../assets/app.js"),
    "text/javascript; charset=utf-8",
    "no-cache",
);
static STYLE: Embedded = Embedded::file(
    include_bytes!("../../assets/app.css"),
    "text/css; charset=utf-8",
    "no-cache",
);

pub fn page(req: &Parts) -> ApiResult {
    PAGE.serve(req)
}

pub fn script(req: &Parts) -> ApiResult {
    SCRIPT.serve(req)
}

pub fn style(req: &Parts) -> ApiResult {
    STYLE.serve(req)
}
