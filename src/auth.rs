//! Identities: user tokens (JWT HS256 by default, pluggable through [`Authenticator`]) and
//! the management API keys with their scopes ([`ApiKeys`]). Secrets never reach the logs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Secret, Settings, MAIN_API_KEY_NAME};
use crate::limits::SendLimiter;

/// Who a user token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub user_id: String,
    pub name: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unsupported token algorithm (only HS256 is accepted)")]
    Algorithm,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token claims invalid: {0}")]
    Claims(&'static str),
}

/// Verifies user tokens. The default is [`JwtAuthenticator`]; a deployment can plug its own
/// account system by implementing this trait and passing it to [`crate::start_with`].
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn verify(&self, token: &str) -> Result<UserIdentity, AuthError>;
}

type HmacSha256 = Hmac<Sha256>;

/// HS256 JWTs: `sub` (user id, string), `name`, `device` (optional), `exp` (required).
pub struct JwtAuthenticator {
    secret: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

impl JwtAuthenticator {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    /// Verify synchronously against the given clock (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: i64) -> Result<UserIdentity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: Header = decode_json(h)?;
        if header.alg != "HS256" {
            return Err(AuthError::Algorithm);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.secret).map_err(|_| AuthError::Signature)?;
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
        let claims: Claims = decode_json(p)?;
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(AuthError::Claims("sub must be 1 to 128 characters"));
        }
        if claims.exp <= now {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AuthError::NotYetValid);
        }
        Ok(UserIdentity {
            user_id: claims.sub,
            name: claims.name,
            device: claims.device,
        })
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = B64.decode(part).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn verify(&self, token: &str) -> Result<UserIdentity, AuthError> {
        self.verify_at(token, unix_now())
    }
}

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Mint an HS256 user token (the `herald token` command; tests).
pub fn mint_token(
    secret: &[u8],
    user: &str,
    name: Option<&str>,
    device: Option<&str>,
    exp_unix: i64,
) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = Claims {
        sub: user.to_owned(),
        name: name.map(str::to_owned),
        device: device.map(str::to_owned),
        exp: exp_unix,
        nbf: None,
        iat: Some(unix_now()),
    };
    let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let sig = match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    };
    format!("{signing_input}.{}", B64.encode(sig))
}

/// Constant-time comparison of a presented API key with the configured one. The SHA-256
/// digests are compared, so neither the bytes nor the length of the key show in the timing.
pub fn api_key_matches(presented: &str, expected: &str) -> bool {
    key_digest(presented).ct_eq(&key_digest(expected)).into()
}

fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// What a management API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Send messages: `POST /api/v1/messages`, `POST /message/sendMessage`.
    Send,
    /// Every management route (sends included).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Admin => "admin",
        }
    }

    /// The scope an API-key route needs. Only the two send routes need just `send`; every
    /// other route — any added later included — needs `admin`, so a new route is closed to
    /// send-only keys until it is listed here.
    pub fn for_route(method: &axum::http::Method, path: &str) -> Scope {
        match (method, path) {
            (&axum::http::Method::POST, "/api/v1/messages" | "/message/sendMessage") => Scope::Send,
            _ => Scope::Admin,
        }
    }
}

/// The scopes of one key. `admin` includes `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    send: bool,
    admin: bool,
}

impl Scopes {
    /// The main `api_key`: everything.
    pub const ALL: Scopes = Scopes {
        send: true,
        admin: true,
    };

    /// From validated `scopes = [...]` names (unknown names were rejected at start).
    pub fn from_names(names: &[String]) -> Scopes {
        Scopes {
            send: names.iter().any(|n| n == "send"),
            admin: names.iter().any(|n| n == "admin"),
        }
    }

    pub fn allows(self, needed: Scope) -> bool {
        self.admin || (self.send && needed == Scope::Send)
    }

    /// For logs: `"admin"` or `"send"`.
    pub fn describe(self) -> &'static str {
        if self.admin {
            "admin"
        } else {
            "send"
        }
    }
}

/// One management API key: its name (for logs and metrics), the digest of the secret, its
/// scopes and its send limit.
pub struct ApiKeyEntry {
    pub name: Arc<str>,
    digest: [u8; 32],
    pub scopes: Scopes,
    pub send_limit: Option<SendLimiter>,
}

impl std::fmt::Debug for ApiKeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("send_limit", &self.send_limit.is_some())
            .finish_non_exhaustive()
    }
}

/// Every management API key the server accepts: the main `api_key` (configured or
/// generated; every scope; `api_key_rate_limit`) and the `[[api_keys]]` entries. Only
/// SHA-256 digests are kept.
#[derive(Debug)]
pub struct ApiKeys {
    entries: Vec<ApiKeyEntry>,
}

impl ApiKeys {
    /// From validated settings and the resolved main key.
    pub fn new(main: &Secret, settings: &Settings) -> Result<ApiKeys, ConfigError> {
        let limiter = |path: &str, text: Option<&str>| {
            Ok::<_, ConfigError>(
                crate::limits::parse_optional(path, text)?
                    .and_then(|rate| SendLimiter::new(rate, text.unwrap_or_default())),
            )
        };
        let mut entries = vec![ApiKeyEntry {
            name: Arc::from(MAIN_API_KEY_NAME),
            digest: key_digest(main.expose()),
            scopes: Scopes::ALL,
            send_limit: limiter("api_key_rate_limit", settings.api_key_rate_limit.as_deref())?,
        }];
        for (i, k) in settings.api_keys.iter().enumerate() {
            let digest = key_digest(k.key.expose());
            if entries.iter().any(|e| e.digest == digest) {
                return Err(ConfigError::Invalid(format!(
                    "api_keys[{i}] (\"{}\").key: the same key is configured twice; every key must be distinct",
                    k.name
                )));
            }
            entries.push(ApiKeyEntry {
                name: Arc::from(k.name.as_str()),
                digest,
                scopes: Scopes::from_names(&k.scopes),
                send_limit: limiter(
                    &format!("api_keys[{i}] (\"{}\").rate_limit", k.name),
                    k.rate_limit.as_deref(),
                )?,
            });
        }
        Ok(ApiKeys { entries })
    }

    /// The key `presented` is, if any. The presented key is hashed once and its digest
    /// compared with every key's in constant time, without stopping at a match.
    pub fn find(&self, presented: &str) -> Option<&ApiKeyEntry> {
        let digest = key_digest(presented);
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = &ApiKeyEntry> {
        self.entries.iter()
    }
}

/// The secrets a server runs with, after resolution.
#[derive(Clone)]
pub struct ResolvedSecrets {
    pub jwt_secret: Secret,
    pub api_key: Secret,
    /// The file generated secrets were read from or written to, if any.
    pub file: Option<PathBuf>,
    /// Which secrets were generated just now.
    pub generated: Vec<&'static str>,
}

#[derive(Default, Serialize, Deserialize)]
struct SecretsFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_secret: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<Secret>,
}

pub const SECRETS_FILE: &str = "herald-secrets.toml";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read or write the secrets file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secrets file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The file can be read or written by users other than its owner. Refused rather than
    /// warned about: whoever reads it can send as any service and forge any user's token,
    /// whoever writes it can replace both (docs/configuration.md §3, "Secrets").
    #[error(
        "the secrets file {path} can be {access} by other users (mode {mode:04o}); it holds \
         the API key and the token secret, so Herald refuses to use it. Run `chmod 600 {path}` \
         (and rotate the secrets if someone else may have read them)"
    )]
    Exposed {
        path: PathBuf,
        mode: u32,
        access: &'static str,
    },
    /// A client command found no secrets to use: fresh ones would not match the server's.
    #[error(
        "no {missing:?} configured and {path} does not hold it. The server generates that file \
         when it first starts: run this command in the server's working directory, or pass the \
         server's --config, or set HERALD_JWT_SECRET / HERALD_API_KEY. (`herald token \
         --generate` creates the file here, for a server that will start here.)",
        missing = missing.join(", ")
    )]
    NotGenerated {
        path: PathBuf,
        missing: Vec<&'static str>,
    },
}

/// Configured secrets win; missing ones come from `herald-secrets.toml` in the secrets
/// directory, generated (mode 0600) on first use. `herald serve` calls this; the client
/// commands call [`existing_secrets`], so a token minted by the CLI is accepted by a server
/// using the same settings.
pub fn resolve_secrets(settings: &Settings) -> Result<ResolvedSecrets, SecretsError> {
    secrets(settings, true)
}

/// [`resolve_secrets`] without generating anything: `herald token` and `herald send` run
/// where no server has generated secrets would otherwise mint a token (or use a key) that
/// no running server accepts.
pub fn existing_secrets(settings: &Settings) -> Result<ResolvedSecrets, SecretsError> {
    secrets(settings, false)
}

fn secrets(settings: &Settings, generate: bool) -> Result<ResolvedSecrets, SecretsError> {
    if let (Some(jwt), Some(key)) = (&settings.jwt_secret, &settings.api_key) {
        return Ok(ResolvedSecrets {
            jwt_secret: jwt.clone(),
            api_key: key.clone(),
            file: None,
            generated: vec![],
        });
    }
    let dir = settings.secrets_dir();
    let path = dir.join(SECRETS_FILE);
    let mut stored = read_secrets(&path)?.unwrap_or_default();
    let mut generated = vec![];
    if settings.jwt_secret.is_none() && stored.jwt_secret.is_none() {
        stored.jwt_secret = Some(Secret::new(random_token(32)));
        generated.push("jwt_secret");
    }
    if settings.api_key.is_none() && stored.api_key.is_none() {
        stored.api_key = Some(Secret::new(format!("hk_{}", random_token(32))));
        generated.push("api_key");
    }
    if !generated.is_empty() && !generate {
        return Err(SecretsError::NotGenerated {
            path,
            missing: generated,
        });
    }
    if !generated.is_empty() {
        std::fs::create_dir_all(&dir).map_err(|source| SecretsError::Io {
            path: dir.clone(),
            source,
        })?;
        write_secrets(&path, &stored)?;
    }
    // Configured values win; the file fills in the rest (filled above when missing).
    let (Some(jwt_secret), Some(api_key)) = (
        settings.jwt_secret.clone().or(stored.jwt_secret),
        settings.api_key.clone().or(stored.api_key),
    ) else {
        return Err(SecretsError::Invalid {
            path,
            message: "missing secrets".into(),
        });
    };
    Ok(ResolvedSecrets {
        jwt_secret,
        api_key,
        file: Some(path),
        generated,
    })
}

fn read_secrets(path: &Path) -> Result<Option<SecretsFile>, SecretsError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    // The mode of the file just opened (fstat), checked before anything is read from it.
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
    check_private(path, mode)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| SecretsError::Invalid {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
}

/// A secrets file must be readable and writable by its owner only (execute bits are
/// harmless). Herald writes it 0600; an operator may have created it with their umask.
fn check_private(path: &Path, mode: u32) -> Result<(), SecretsError> {
    let access = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "read",
        (false, true) => "written",
        (true, true) => "read and written",
    };
    Err(SecretsError::Exposed {
        // Absolute, so the `chmod` in the message works from any directory.
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        mode,
        access,
    })
}

fn write_secrets(path: &Path, secrets: &SecretsFile) -> Result<(), SecretsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    let text = toml::to_string(secrets).map_err(|e| SecretsError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    // Write a private temporary file, then rename it over the old one (atomic).
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(
        b"# Generated by herald. Keep private: anyone with these can send and read messages.\n",
    )
    .and_then(|()| f.write_all(text.as_bytes()))
    .and_then(|()| f.sync_all())
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    B64.encode(bytes)
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive): an API
/// key or a user token. The API's extractors and `GET /events` read it the same way.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_case_insensitively_and_trimmed() {
        use axum::http::{header, HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc "),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn rfc7515_hs256_example_verifies_structure() {
        // RFC 7515 A.1: HS256 over a known key. Its claims use `iss`, not `sub`, so the
        // signature checks out but the claims are rejected: proves our HMAC matches the RFC.
        let key = B64
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let auth = JwtAuthenticator::new(&key);
        assert_eq!(auth.verify_at(token, 0), Err(AuthError::Malformed)); // no `sub`
        let mut bad = token.to_owned();
        bad.pop();
        bad.push('A');
        assert_eq!(auth.verify_at(&bad, 0), Err(AuthError::Signature));
    }

    #[test]
    fn mint_and_verify() {
        let auth = JwtAuthenticator::new(b"secret");
        let t = mint_token(
            b"secret",
            "42",
            Some("alice"),
            Some("laptop"),
            unix_now() + 60,
        );
        let id = auth.verify_at(&t, unix_now()).unwrap();
        assert_eq!(id.user_id, "42");
        assert_eq!(id.name.as_deref(), Some("alice"));
        assert_eq!(id.device.as_deref(), Some("laptop"));
    }

    #[test]
    fn rejects_expired_forged_and_none() {
        let auth = JwtAuthenticator::new(b"secret");
        let now = unix_now();
        let expired = mint_token(b"secret", "42", None, None, now - 1);
        assert_eq!(auth.verify_at(&expired, now), Err(AuthError::Expired));
        let forged = mint_token(b"other", "42", None, None, now + 60);
        assert_eq!(auth.verify_at(&forged, now), Err(AuthError::Signature));
        let payload = B64.encode(format!(r#"{{"sub":"42","exp":{}}}"#, now + 60));
        let none = format!("{}.{payload}.", B64.encode(br#"{"alg":"none"}"#));
        assert_eq!(auth.verify_at(&none, now), Err(AuthError::Algorithm));
        assert_eq!(auth.verify_at("", now), Err(AuthError::Missing));
        assert_eq!(auth.verify_at("a.b", now), Err(AuthError::Malformed));
        assert_eq!(auth.verify_at("a.b.c.d", now), Err(AuthError::Malformed));
    }

    #[test]
    fn api_key_compare() {
        assert!(api_key_matches("abc", "abc"));
        assert!(!api_key_matches("abd", "abc"));
        assert!(!api_key_matches("ab", "abc"));
        assert!(!api_key_matches("", "abc"));
    }

    #[test]
    fn scopes_admin_includes_send() {
        let send = Scopes::from_names(&["send".into()]);
        let admin = Scopes::from_names(&["admin".into()]);
        assert!(send.allows(Scope::Send) && !send.allows(Scope::Admin));
        assert!(admin.allows(Scope::Send) && admin.allows(Scope::Admin));
        assert!(Scopes::ALL.allows(Scope::Admin));
    }

    #[test]
    fn only_the_send_routes_need_only_send() {
        use axum::http::Method;
        assert_eq!(
            Scope::for_route(&Method::POST, "/api/v1/messages"),
            Scope::Send
        );
        assert_eq!(
            Scope::for_route(&Method::POST, "/message/sendMessage"),
            Scope::Send
        );
        for (m, p) in [
            (Method::GET, "/api/v1/messages"),
            (Method::GET, "/api/v1/messages/{id}"),
            (Method::DELETE, "/api/v1/messages/{id}"),
            (Method::GET, "/message/getMessagePage"),
            (Method::PUT, "/api/v1/recipients/{user_id}"),
            (Method::POST, "/api/v1/some/future/route"),
        ] {
            assert_eq!(Scope::for_route(&m, p), Scope::Admin, "{m} {p}");
        }
    }

    #[test]
    fn key_ring_finds_each_key_with_its_scopes() {
        let settings = Settings {
            api_keys: vec![crate::config::ApiKeySettings {
                name: "reports".into(),
                key: Secret::new("reports-key-0123456789"),
                scopes: vec!["send".into()],
                rate_limit: Some("2/min".into()),
            }],
            ..Settings::default()
        };
        let keys = ApiKeys::new(&Secret::new("main-key"), &settings).unwrap();
        let main = keys.find("main-key").unwrap();
        assert_eq!(&*main.name, MAIN_API_KEY_NAME);
        assert_eq!(main.scopes, Scopes::ALL);
        assert!(main.send_limit.is_none());
        let reports = keys.find("reports-key-0123456789").unwrap();
        assert_eq!(&*reports.name, "reports");
        assert!(!reports.scopes.allows(Scope::Admin));
        assert!(reports.send_limit.is_some());
        assert!(keys.find("reports-key-012345678").is_none());
        assert!(keys.find("").is_none());
        assert!(!format!("{keys:?}").contains("reports-key"));

        // A generated main key that happens to equal a configured one is refused.
        let err = ApiKeys::new(&Secret::new("reports-key-0123456789"), &settings).unwrap_err();
        assert!(err.to_string().contains("api_keys[0]"), "{err}");
    }

    #[test]
    fn secrets_generated_once_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::for_data_dir(dir.path());
        let a = resolve_secrets(&settings).unwrap();
        assert_eq!(a.generated, vec!["jwt_secret", "api_key"]);
        let file = a.file.clone().unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = resolve_secrets(&settings).unwrap();
        assert!(b.generated.is_empty());
        assert_eq!(a.jwt_secret, b.jwt_secret);
        assert_eq!(a.api_key, b.api_key);

        let configured = Settings {
            api_key: Some(Secret::new("k")),
            ..Settings::for_data_dir(dir.path())
        };
        let c = resolve_secrets(&configured).unwrap();
        assert_eq!(c.api_key.expose(), "k");
        assert_eq!(c.jwt_secret, a.jwt_secret);

        // Only one configured, in a fresh directory: the other is generated.
        let fresh = tempfile::tempdir().unwrap();
        let only_jwt = Settings {
            jwt_secret: Some(Secret::new("j")),
            ..Settings::for_data_dir(fresh.path())
        };
        let d = resolve_secrets(&only_jwt).unwrap();
        assert_eq!(d.jwt_secret.expose(), "j");
        assert_eq!(d.generated, vec!["api_key"]);
    }

    #[test]
    fn a_secrets_file_others_can_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::for_data_dir(dir.path());
        let path = dir.path().canonicalize().unwrap().join(SECRETS_FILE);
        let secret = "operator-made-key-0123456789";
        std::fs::write(
            &path,
            format!("jwt_secret = \"{secret}-jwt\"\napi_key = \"{secret}\"\n"),
        )
        .unwrap();
        for (mode, access) in [
            (0o644, "read"),
            (0o640, "read"),
            (0o604, "read"),
            (0o620, "written"),
            (0o602, "written"),
            (0o666, "read and written"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let Err(err) = resolve_secrets(&settings) else {
                panic!("mode {mode:o} was accepted");
            };
            assert!(
                matches!(err, SecretsError::Exposed { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let text = err.to_string();
            // Names the file, the mode and the fix; never the contents.
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("mode 0{mode:o}")), "{text}");
            assert!(
                text.contains(&format!("can be {access} by other users")),
                "{text}"
            );
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(!text.contains(secret), "{text}");
            // Nothing was rewritten or re-moded.
            let now = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(now, mode);
        }
        // Owner-only modes are used, execute bits included.
        for mode in [0o600, 0o400, 0o700] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let ok = resolve_secrets(&settings).unwrap();
            assert_eq!(ok.api_key.expose(), secret, "mode {mode:o}");
            assert!(ok.generated.is_empty());
        }
        // Fully configured secrets never read the file, so its mode does not matter.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let configured = Settings {
            api_key: Some(Secret::new("k")),
            jwt_secret: Some(Secret::new("j")),
            ..Settings::for_data_dir(dir.path())
        };
        assert_eq!(resolve_secrets(&configured).unwrap().file, None);
    }
}
