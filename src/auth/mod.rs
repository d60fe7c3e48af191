//! Authentication: HS256 access tokens and Argon2id password hashes.

mod password;
mod token;

pub use password::{hash_password, Passwords};
pub use token::{Claims, Principal, TokenError, Tokens};
