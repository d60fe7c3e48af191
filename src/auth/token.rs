//! HS256 JWTs (RFC 8725 practice: one fixed algorithm, expiry required, no leeway).

use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Role;

/// The token body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Student id (admins are rows of `students` with role admin).
    pub sub: Uuid,
    pub role: Role,
    /// Whether the account may register (enrollment_status active). Read at
    /// login so the hot path never asks PostgreSQL; absent means yes.
    #[serde(default = "yes")]
    pub act: bool,
    /// The account's token epoch at login (sql/0006_student_access.sql): a
    /// token of an older epoch than the account's is refused. Absent is 0.
    #[serde(default)]
    pub ep: i64,
    /// Issued at; a token issued in the future (beyond [`MAX_CLOCK_SKEW_SECS`])
    /// is refused.
    pub iat: i64,
    /// Not valid before, when present (checked, without leeway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
}

/// How far in the future a token's `iat` may lie: clocks of the instances
/// that mint and check tokens differ by at most this much.
pub const MAX_CLOCK_SKEW_SECS: i64 = 60;

fn yes() -> bool {
    true
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub student_id: Uuid,
    pub role: Role,
    /// The account may register (see [`Claims::act`]).
    pub may_register: bool,
    /// The token epoch it was minted with (see [`Claims::ep`]).
    pub epoch: i64,
}

impl Principal {
    /// Whether this caller may read or act on `student_id`'s resources.
    pub fn may_act_for(&self, student_id: Uuid) -> bool {
        self.role == Role::Admin || self.student_id == student_id
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

/// Mints and checks tokens with one secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for an account whose tokens were never revoked (epoch 0):
    /// tests and benchmarks of fresh accounts use it.
    pub fn mint(&self, student_id: Uuid, role: Role, active: bool) -> String {
        self.mint_at(student_id, role, active, 0)
    }

    /// A token for `student_id` at token epoch `epoch`, valid for the
    /// configured lifetime.
    pub fn mint_at(&self, student_id: Uuid, role: Role, active: bool, epoch: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        self.mint_claims(&Claims {
            sub: student_id,
            role,
            act: active,
            ep: epoch,
            iat: now,
            nbf: None,
            exp: now + self.ttl.as_secs() as i64,
        })
    }

    /// Signs arbitrary claims (tests use it for expired tokens).
    pub fn mint_claims(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        match decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if data.claims.iat > chrono::Utc::now().timestamp() + MAX_CLOCK_SKEW_SECS => {
                Err(TokenError::Invalid)
            }
            Ok(data) => Ok(Principal {
                student_id: data.claims.sub,
                role: data.claims.role,
                may_register: data.claims.act,
                epoch: data.claims.ep,
            }),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::new(SECRET, Duration::from_secs(60))
    }

    #[test]
    fn a_token_not_yet_valid_or_issued_in_the_future_is_refused() {
        let now = chrono::Utc::now().timestamp();
        let claims = |iat, nbf| Claims {
            sub: Uuid::new_v4(),
            role: Role::Student,
            act: true,
            ep: 0,
            iat,
            nbf,
            exp: now + 600,
        };
        let t = tokens();
        assert_eq!(
            t.verify(&t.mint_claims(&claims(now, Some(now + 300)))),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            t.verify(&t.mint_claims(&claims(now + 300, None))),
            Err(TokenError::Invalid)
        );
        assert!(t
            .verify(&t.mint_claims(&claims(now, Some(now - 1))))
            .is_ok());
        assert!(t
            .verify(&t.mint_claims(&claims(now + MAX_CLOCK_SKEW_SECS - 5, None)))
            .is_ok());
    }

    #[test]
    fn a_minted_token_verifies_to_its_principal() {
        let id = Uuid::new_v4();
        let p = tokens()
            .verify(&tokens().mint(id, Role::Admin, true))
            .unwrap();
        assert_eq!(
            p,
            Principal {
                student_id: id,
                role: Role::Admin,
                may_register: true,
                epoch: 0,
            }
        );
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let now = chrono::Utc::now().timestamp();
        let t = tokens().mint_claims(&Claims {
            sub: Uuid::new_v4(),
            role: Role::Student,
            act: true,
            ep: 0,
            iat: now - 120,
            nbf: None,
            exp: now - 1,
        });
        assert_eq!(tokens().verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_key_is_invalid() {
        let other = Tokens::new(b"another-secret-another-secret-!!", Duration::from_secs(60));
        let t = other.mint(Uuid::new_v4(), Role::Admin, true);
        assert_eq!(tokens().verify(&t), Err(TokenError::Invalid));
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(tokens().verify("not.a.token"), Err(TokenError::Invalid));
        assert_eq!(tokens().verify(""), Err(TokenError::Invalid));
    }
}
