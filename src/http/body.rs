//! Reading request bodies and query strings: limits first, then parsing.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, header, http::request::Parts};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads a JSON body of at most `limit` bytes and decodes it.
///
/// Order matters: the content type, then the declared length (a 10 GB
/// `Content-Length` is refused without reading a byte), then the bytes as they
/// arrive (a chunked body is cut at the limit), and only then parsing.
pub async fn json<T: DeserializeOwned>(
    parts: &Parts,
    body: Incoming,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_limited(parts, body, limit).await?;
    decode(&bytes)
}

/// Whether a request's body read began and has not finished. The router
/// puts one in each request's extensions; when the request deadline passes
/// while it is set, the client is the slow party (a body shorter than its
/// `Content-Length`, or one trickling in) and the answer is 408, not the
/// 503 of a server that was slow for its own reasons.
#[derive(Debug, Clone, Default)]
pub struct BodyWait(Arc<AtomicBool>);

impl BodyWait {
    /// True while a handler waits for the body's bytes, and after a wait
    /// that was abandoned (the deadline dropped the read mid-way): what the
    /// router asks once the deadline has passed.
    pub fn waiting(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, waiting: bool) {
        self.0.store(waiting, Ordering::SeqCst);
    }
}

pub async fn read_limited(parts: &Parts, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    if !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let wait = parts.extensions.get::<BodyWait>();
    wait.inspect(|w| w.set(true));
    let collected = Limited::new(body, limit).collect().await;
    wait.inspect(|w| w.set(false));
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::bad_request(
            "body_read_failed",
            format!("failed to read the request body: {e}"),
        )),
    }
}

fn is_json(value: Option<&header::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5]
                .to_ascii_lowercase()
                .starts_with("application/")
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Decodes JSON, sorting serde's failures into stable codes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => "malformed_json",
            Category::Data if e.to_string().starts_with("unknown field") => "unknown_field",
            Category::Data => "invalid_body",
        };
        ApiError::bad_request(code, format!("request body: {e}"))
    })
}

/// Decodes a query string into `T` (which should deny unknown fields).
pub fn query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_query", format!("query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        id: uuid::Uuid,
    }

    fn code_of<T: std::fmt::Debug>(r: Result<T, ApiError>) -> &'static str {
        r.unwrap_err().code()
    }

    use crate::http::registration::RegisterRequest as Register;

    const CODES: [&str; 3] = ["malformed_json", "unknown_field", "invalid_body"];

    proptest::proptest! {
        /// Arbitrary bytes decode or fail with a 400 and a known code; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Err(e) = decode::<Register>(&bytes) {
                proptest::prop_assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
                proptest::prop_assert!(CODES.contains(&e.code()));
            }
        }

        /// JSON-shaped input near the real body: fields, types and UUIDs mutated.
        #[test]
        fn json_like_bodies_get_a_precise_code(
            key in "[a-z_]{1,16}",
            value in proptest::prop_oneof![
                proptest::strategy::Just("[]".to_string()),
                proptest::strategy::Just("null".to_string()),
                "\\[\"[0-9a-f-]{0,40}\"\\]",
                "-?[0-9]{1,20}",
                "\"[ -~]{0,40}\"",
            ],
        ) {
            let body = format!("{{\"{key}\": {value}}}");
            match decode::<Register>(body.as_bytes()) {
                Ok(r) => proptest::prop_assert_eq!(key, "section_ids", "decoded {:?}", r),
                Err(e) => proptest::prop_assert!(CODES.contains(&e.code()), "{}", e.code()),
            }
        }

        /// Query strings: any printable text is parsed or refused with 400.
        #[test]
        fn any_query_string_is_parsed_or_refused(q in "[ -~]{0,80}") {
            #[derive(Debug, serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code)]
            struct Filter {
                semester_id: Option<uuid::Uuid>,
                limit: Option<i64>,
            }
            if let Err(e) = query::<Filter>(Some(&q)) {
                proptest::prop_assert_eq!(e.code(), "invalid_query");
            }
        }
    }

    /// The kept corpus (tests/corpus/register_bodies.jsonl): hostile and
    /// borderline register bodies, each with the exact answer it must get.
    /// Failures found by the properties above or by schemathesis are added
    /// there, so they are checked on every run.
    #[test]
    fn the_register_body_corpus_gets_its_recorded_answers() {
        let corpus = include_str!("../../tests/corpus/register_bodies.jsonl");
        let mut checked = 0;
        for (line, entry) in corpus.lines().enumerate() {
            let case: serde_json::Value = serde_json::from_str(entry)
                .unwrap_or_else(|e| panic!("corpus line {}: {e}", line + 1));
            let (expect, body, why) = (
                case["expect"].as_str().expect("expect"),
                case["body"].as_str().expect("body"),
                case["why"].as_str().unwrap_or(""),
            );
            let got = match decode::<Register>(body.as_bytes()) {
                Ok(_) => "ok",
                Err(e) => {
                    assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
                    e.code()
                }
            };
            assert_eq!(got, expect, "corpus line {} ({why}): {body:?}", line + 1);
            checked += 1;
        }
        assert!(checked >= 20, "the corpus is read ({checked} cases)");
    }

    #[test]
    fn json_content_types_are_recognised() {
        let ok = |s: &'static str| is_json(Some(&header::HeaderValue::from_static(s)));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("+json"));
        assert!(!is_json(None));
    }

    #[test]
    fn decoding_failures_have_stable_codes() {
        assert_eq!(code_of(decode::<Body>(b"{")), "malformed_json");
        assert_eq!(code_of(decode::<Body>(b"not json")), "malformed_json");
        assert_eq!(
            code_of(decode::<Body>(
                br#"{"id":"00000000-0000-0000-0000-000000000000","x":1}"#
            )),
            "unknown_field"
        );
        assert_eq!(code_of(decode::<Body>(br#"{"id":"nope"}"#)), "invalid_body");
        assert!(decode::<Body>(br#"{"id":"00000000-0000-0000-0000-000000000000"}"#).is_ok());
    }
}
