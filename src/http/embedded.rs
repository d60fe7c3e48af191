//! Files compiled into the binary and served as they are (`/app`, `/docs`):
//! an ETag computed once, a cache policy, and for a page its Content
//! Security Policy. Conditional requests get 304 (`openapi::conditional_as`).

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::{header, header::HeaderValue, http::request::Parts};

use super::{
    openapi::{conditional_as, etag_of},
    ApiResult,
};

pub struct Embedded {
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
    /// The page's Content-Security-Policy; None for what a page loads.
    policy: Option<&'static str>,
    etag: OnceLock<HeaderValue>,
}

impl Embedded {
    /// A file a page loads (a script, a style sheet).
    pub const fn file(
        body: &'static [u8],
        content_type: &'static str,
        cache_control: &'static str,
    ) -> Self {
        Self {
            body,
            content_type,
            cache_control,
            policy: None,
            etag: OnceLock::new(),
        }
    }

    /// An HTML page, served with its Content-Security-Policy.
    pub const fn page(
        body: &'static [u8],
        cache_control: &'static str,
        policy: &'static str,
    ) -> Self {
        Self {
            body,
            content_type: "text/html; charset=utf-8",
            cache_control,
            policy: Some(policy),
            etag: OnceLock::new(),
        }
    }

    pub fn serve(&self, req: &Parts) -> ApiResult {
        let etag = self.etag.get_or_init(|| etag_of(self.body)).clone();
        let mut response = conditional_as(
            req,
            etag,
            self.cache_control,
            self.content_type,
            Bytes::from_static(self.body),
        )?;
        if let Some(policy) = self.policy {
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            );
        }
        Ok(response)
    }
}
