//! Argon2id password hashes as PHC strings (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), with the crate's
//! default parameters and a fresh random salt each time. Verification reads the parameters from the string, so
//! hashes made elsewhere (`USERRL_ADMIN_PASSWORD_HASH`, e.g. from the `argon2` CLI) verify too.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{Error, PasswordHasher, PasswordVerifier};

use super::guard::AuthError;

/// Hashes a password to a PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let hash: PasswordHash =
        Argon2::default().hash_password(password.as_bytes()).map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc`; an unreadable string is an error, not a mismatch.
pub fn verify_password(password: &str, phc: &str) -> Result<bool, AuthError> {
    let hash = PasswordHash::new(phc).map_err(|e| AuthError::Hash(format!("the stored hash does not parse: {e}")))?;
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(AuthError::Hash(e.to_string())),
    }
}

/// Checks that `phc` is an argon2 PHC string this server can verify against.
pub(crate) fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!("expected an argon2 hash, found {}", hash.algorithm));
    }
    // Verifying any password proves the parameters are usable (a mismatch is the expected outcome).
    match Argon2::default().verify_password(b"", &hash) {
        Ok(()) | Err(Error::PasswordInvalid) => Ok(()),
        Err(e) => Err(format!("unusable argon2 hash: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_password_only_and_are_salted() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password("correct horse", &a).unwrap());
        assert!(verify_password("correct horse", &b).unwrap());
        assert!(!verify_password("correct horsE", &a).unwrap());
        assert!(!verify_password("", &a).unwrap());
        assert!(check_phc(&a).is_ok());
        assert!(verify_password("x", "plain text").is_err());
        assert!(check_phc("plain text").is_err());
        assert!(check_phc("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }
}
