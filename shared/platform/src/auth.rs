//! Bearer-token authentication and per-RPC authorisation.
//!
//! Tokens are JWTs: HS256 with a shared secret (the embedded default), or RS256/ES256
//! verified with public keys from a JWKS file (production). Claims: `sub`, `tenant`,
//! `roles`, `exp`, `iss`, `aud` (and optionally `nbf`, `iat`). The verified caller is put
//! in the request extensions as [`Caller`]; a per-service [`RoleTable`] says which roles
//! may call each RPC. Health and reflection are open.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;

/// The roles of DESIGN.md §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    SalesManager,
    SalesRep,
    SupportManager,
    SupportAgent,
    Marketer,
    Analyst,
    Viewer,
    /// Service accounts of feed consumers; may read feeds across tenants.
    System,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Admin,
        Role::SalesManager,
        Role::SalesRep,
        Role::SupportManager,
        Role::SupportAgent,
        Role::Marketer,
        Role::Analyst,
        Role::Viewer,
        Role::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::SalesManager => "sales_manager",
            Role::SalesRep => "sales_rep",
            Role::SupportManager => "support_manager",
            Role::SupportAgent => "support_agent",
            Role::Marketer => "marketer",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
            Role::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Managers and admins may change any record; reps only their own or unassigned ones.
    pub fn manages_all_records(self) -> bool {
        matches!(
            self,
            Role::Admin | Role::SalesManager | Role::SupportManager | Role::System
        )
    }
}

/// The verified identity of the caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<Role>,
    /// The raw bearer token, forwarded on service-to-service calls.
    pub token: Arc<str>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the caller may change a record owned by `owner` (empty: unassigned).
    pub fn may_change_owned_by(&self, owner: &str) -> bool {
        owner.is_empty()
            || owner == self.subject
            || self.roles.iter().any(|role| role.manages_all_records())
    }

    /// The caller of a request, as put there by the auth layer.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                ApiError::unauthenticated("MISSING_CREDENTIALS", "a bearer token is required")
                    .into()
            })
    }
}

/// The claims of a CRM token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    /// Public keys by `kid`, each with the one algorithm it may verify.
    public_keys: HashMap<String, (DecodingKey, Algorithm)>,
    issuer: String,
    audience: String,
    leeway_s: u64,
    verified: VerifiedTokens,
}

/// Tokens that passed verification, with their callers, until they expire. A client
/// sends the same token on every call; checking its signature and parsing its claims
/// again each time would cost more than most calls' own work. Only the exact bytes of a
/// verified token hit, and the expiry is checked on every hit.
struct VerifiedTokens {
    entries: std::sync::Mutex<HashMap<Arc<str>, (Caller, u64)>>,
}

/// Verified tokens kept at most; past this the expired ones go, or else all of them.
const VERIFIED_TOKENS_MAX: usize = 10_000;

impl VerifiedTokens {
    fn new() -> Self {
        Self {
            entries: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (Caller, u64)>> {
        // The map holds no invariant a panic could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller of a token verified before, if it has not expired (`now` in seconds,
    /// `leeway` as in verification).
    fn get(&self, token: &str, now: u64, leeway: u64) -> Option<Caller> {
        let entries = self.lock();
        let (caller, exp) = entries.get(token)?;
        (now < exp.saturating_add(leeway)).then(|| caller.clone())
    }

    fn insert(&self, caller: &Caller, exp: u64, now: u64, leeway: u64) {
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_TOKENS_MAX {
            entries.retain(|_, (_, exp)| now < exp.saturating_add(leeway));
            if entries.len() >= VERIFIED_TOKENS_MAX {
                entries.clear();
            }
        }
        entries.insert(caller.token.clone(), (caller.clone(), exp));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("reading the JWKS file {path}: {source}")]
    JwksRead {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing the JWKS file {path}: {detail}")]
    JwksParse { path: String, detail: String },
    #[error("no token verification key: set auth.hs256_secret or auth.jwks_file")]
    NoKey,
}

impl Authenticator {
    pub fn new(
        hs256_secret: Option<&[u8]>,
        jwks_file: Option<&Path>,
        issuer: &str,
        audience: &str,
        leeway_s: u64,
    ) -> Result<Self, AuthSetupError> {
        let mut public_keys = HashMap::new();
        if let Some(path) = jwks_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| AuthSetupError::JwksRead {
                    path: path.display().to_string(),
                    source,
                })?;
            let parse_err = |detail: String| AuthSetupError::JwksParse {
                path: path.display().to_string(),
                detail,
            };
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
            for (index, jwk) in set.keys.iter().enumerate() {
                let algorithm = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                    Some("RS256") => Algorithm::RS256,
                    Some("ES256") => Algorithm::ES256,
                    other => {
                        return Err(parse_err(format!(
                            "key {index}: alg must be RS256 or ES256, found {other:?}"
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| parse_err(e.to_string()))?;
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                public_keys.insert(kid, (key, algorithm));
            }
        }
        let hs256 = hs256_secret.map(DecodingKey::from_secret);
        if hs256.is_none() && public_keys.is_empty() {
            return Err(AuthSetupError::NoKey);
        }
        Ok(Self {
            hs256,
            public_keys,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway_s,
            verified: VerifiedTokens::new(),
        })
    }

    /// Verifies `token` and returns the caller it names.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let now = unix_now();
        if let Some(caller) = self.verified.get(token, now, self.leeway_s) {
            return Ok(caller);
        }
        let (caller, exp) = self.verify_signed(token)?;
        self.verified.insert(&caller, exp, now, self.leeway_s);
        Ok(caller)
    }

    /// Checks the signature and claims of `token`; returns its caller and expiry.
    fn verify_signed(&self, token: &str) -> Result<(Caller, u64), ApiError> {
        let invalid = |message: &str| ApiError::unauthenticated("INVALID_TOKEN", message);
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header.kid.clone().unwrap_or_default();
                self.public_keys
                    .get(&kid)
                    .filter(|(_, algorithm)| *algorithm == header.alg)
                    .map(|(key, _)| key)
            }
            _ => None,
        }
        .ok_or_else(|| invalid("token algorithm or key is not accepted"))?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthenticated("TOKEN_EXPIRED", "token has expired")
                }
                ErrorKind::ImmatureSignature => invalid("token is not valid yet"),
                ErrorKind::InvalidAudience => invalid("token audience is not accepted"),
                ErrorKind::InvalidIssuer => invalid("token issuer is not accepted"),
                ErrorKind::InvalidSignature => invalid("token signature is invalid"),
                _ => invalid("token is invalid"),
            }
        })?;
        let claims = data.claims;
        if claims.tenant.is_empty() || claims.sub.is_empty() {
            return Err(invalid("token lacks a tenant or subject"));
        }
        let caller = Caller {
            subject: claims.sub,
            tenant: claims.tenant,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            token: Arc::from(token),
        };
        Ok((caller, claims.exp))
    }
}

/// Issues HS256 tokens (for `crm token issue` and the embedded default's admin token).
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl TokenIssuer {
    pub fn new(hs256_secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(hs256_secret),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    pub fn issue(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[Role],
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(ApiError::internal)?
            .as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            exp: now + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            nbf: None,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(ApiError::internal)
    }
}

/// Which roles may call each RPC, by full method path
/// (`/crm.contact.v1.ContactService/GetContact`). Methods not in the table are refused.
#[derive(Debug, Clone, Default)]
pub struct RoleTable {
    methods: HashMap<String, HashSet<Role>>,
}

impl RoleTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the methods of `service` (e.g. `crm.contact.v1.ContactService`).
    pub fn allow(&mut self, service: &str, method: &str, roles: &[Role]) -> &mut Self {
        self.methods.insert(
            format!("/{service}/{method}"),
            roles.iter().copied().collect(),
        );
        self
    }

    pub fn merge(&mut self, other: RoleTable) {
        self.methods.extend(other.methods);
    }

    /// The roles that may call `path`, or `None` when the method is not in the table.
    pub fn roles_for(&self, path: &str) -> Option<&HashSet<Role>> {
        self.methods.get(path)
    }
}

/// Paths that need no token: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Verifies the bearer token and the role table before a request reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    roles: Arc<RoleTable>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>, roles: Arc<RoleTable>) -> Self {
        Self {
            authenticator,
            roles,
        }
    }

    /// Decides one request: the caller to attach, or the status to answer with.
    pub fn authorise(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated("MISSING_CREDENTIALS", "a bearer token is required")
            })?;
        let caller = self.authenticator.verify(token)?;
        let allowed = self
            .roles
            .roles_for(path)
            .is_some_and(|roles| caller.roles.iter().any(|role| roles.contains(role)));
        if !allowed {
            return Err(ApiError::permission_denied(
                "the caller's roles do not allow this method",
            ));
        }
        Ok(caller)
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    layer: AuthLayer,
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if is_open_path(path) {
            return futures::future::Either::Left(self.inner.call(request));
        }
        match self.layer.authorise(path, request.headers()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(err) => {
                tracing::debug!(rpc.method = %path, reason = err.reason(), "request refused");
                let status: tonic::Status = err.into();
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn authenticator() -> Authenticator {
        Authenticator::new(Some(SECRET), None, "crm", "crm", 0).unwrap()
    }

    fn token_with(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn reason(result: Result<Caller, ApiError>) -> &'static str {
        result.unwrap_err().reason()
    }

    #[test]
    fn issued_tokens_verify() {
        let issuer = TokenIssuer::new(SECRET, "crm", "crm");
        let token = issuer
            .issue("ana", "acme", &[Role::SalesRep], Duration::from_secs(60))
            .unwrap();
        let caller = authenticator().verify(&token).unwrap();
        assert_eq!(caller.subject, "ana");
        assert_eq!(caller.tenant, "acme");
        assert_eq!(caller.roles, [Role::SalesRep]);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = authenticator();
        let base = serde_json::json!({"sub": "a", "tenant": "t", "roles": ["admin"],
            "exp": now() + 60, "iss": "crm", "aud": "crm"});
        let mut expired = base.clone();
        expired["exp"] = (now() - 10).into();
        assert_eq!(
            reason(auth.verify(&token_with(expired, SECRET))),
            "TOKEN_EXPIRED"
        );
        assert_eq!(
            reason(auth.verify(&token_with(base.clone(), b"other-secret"))),
            "INVALID_TOKEN"
        );
        let mut audience = base.clone();
        audience["aud"] = "elsewhere".into();
        assert_eq!(
            reason(auth.verify(&token_with(audience, SECRET))),
            "INVALID_TOKEN"
        );
        let mut issuer = base.clone();
        issuer["iss"] = "evil".into();
        assert_eq!(
            reason(auth.verify(&token_with(issuer, SECRET))),
            "INVALID_TOKEN"
        );
        let mut future = base.clone();
        future["nbf"] = (now() + 3600).into();
        assert_eq!(
            reason(auth.verify(&token_with(future, SECRET))),
            "INVALID_TOKEN"
        );

        // alg: none, signature stripped.
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(base.to_string())
        );
        assert_eq!(reason(auth.verify(&none)), "INVALID_TOKEN");
        assert_eq!(reason(auth.verify("not-a-token")), "INVALID_TOKEN");
    }

    #[test]
    fn verified_tokens_expire_in_the_cache_too() {
        let auth = authenticator();
        let exp = now() + 60;
        let token = token_with(
            serde_json::json!({"sub": "a", "tenant": "t", "roles": ["admin"],
                "exp": exp, "iss": "crm", "aud": "crm"}),
            SECRET,
        );
        let first = auth.verify(&token).expect("valid");
        assert_eq!(auth.verify(&token).expect("cached"), first);
        let leeway = auth.leeway_s;
        assert!(
            auth.verified
                .get(&token, exp + leeway - 1, leeway)
                .is_some()
        );
        assert!(auth.verified.get(&token, exp + leeway, leeway).is_none());
        // A token differing in one byte is verified afresh, and refused.
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(reason(auth.verify(&forged)), "INVALID_TOKEN");
    }

    #[test]
    fn verified_tokens_stay_bounded() {
        let cache = VerifiedTokens::new();
        let caller = |n: usize| Caller {
            subject: "a".into(),
            tenant: "t".into(),
            roles: vec![Role::Admin],
            token: Arc::from(format!("token-{n}")),
        };
        for n in 0..VERIFIED_TOKENS_MAX + 10 {
            cache.insert(&caller(n), 100, 10, 0);
        }
        assert!(cache.lock().len() <= VERIFIED_TOKENS_MAX);
        assert!(cache.get("token-5", 10, 0).is_none());
    }

    #[test]
    fn role_table_decides() {
        let mut table = RoleTable::new();
        table.allow("crm.x.v1.X", "Get", &[Role::Viewer]);
        let layer = AuthLayer::new(Arc::new(authenticator()), Arc::new(table));
        let issuer = TokenIssuer::new(SECRET, "crm", "crm");
        let mut headers = http::HeaderMap::new();
        let token = issuer
            .issue("v", "t", &[Role::Viewer], Duration::from_secs(60))
            .unwrap();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert!(layer.authorise("/crm.x.v1.X/Get", &headers).is_ok());
        assert_eq!(
            layer
                .authorise("/crm.x.v1.X/Delete", &headers)
                .unwrap_err()
                .reason(),
            "PERMISSION_DENIED"
        );
        assert_eq!(
            layer
                .authorise("/crm.x.v1.X/Get", &http::HeaderMap::new())
                .unwrap_err()
                .reason(),
            "MISSING_CREDENTIALS"
        );
    }
}

/// The keys a process verifies and signs with, from the configuration.
pub struct KeyMaterial {
    /// The HS256 secret, when HS256 is in use.
    pub hs256_secret: Option<Vec<u8>>,
    /// Whether the secret was generated just now (first start of the embedded default).
    pub generated: bool,
    /// The secret that signs page tokens.
    pub page_token_secret: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.page_token_secret is required when only a JWKS file is configured")]
    PageTokenSecretMissing,
    #[error(transparent)]
    Setup(#[from] AuthSetupError),
}

impl KeyMaterial {
    /// Uses `auth.hs256_secret`; else, without a JWKS file, reads or creates
    /// `{data_dir}/signing.key` (mode 0600).
    pub fn load(config: &crate::config::Config) -> Result<Self, KeyError> {
        let auth = &config.auth;
        let (hs256_secret, generated) = if !auth.hs256_secret.is_empty() {
            (Some(auth.hs256_secret.as_bytes().to_vec()), false)
        } else if auth.jwks_file.is_empty() {
            let path = config.data_dir.join("signing.key");
            let io = |source| KeyError::Io {
                path: path.display().to_string(),
                source,
            };
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => {
                    (Some(text.trim().as_bytes().to_vec()), false)
                }
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(io(err)),
                _ => {
                    std::fs::create_dir_all(&config.data_dir).map_err(io)?;
                    let mut bytes = [0u8; 32];
                    rand::Rng::fill(&mut rand::rng(), &mut bytes);
                    use base64::Engine as _;
                    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                    // Another process of the suite may have created it meanwhile.
                    match write_private(&path, secret.as_bytes()) {
                        Ok(()) => (Some(secret.into_bytes()), true),
                        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                            let text = std::fs::read_to_string(&path).map_err(io)?;
                            (Some(text.trim().as_bytes().to_vec()), false)
                        }
                        Err(err) => return Err(io(err)),
                    }
                }
            }
        } else {
            (None, false)
        };
        let page_token_secret = if !auth.page_token_secret.is_empty() {
            auth.page_token_secret.as_bytes().to_vec()
        } else {
            hs256_secret
                .clone()
                .ok_or(KeyError::PageTokenSecretMissing)?
        };
        Ok(Self {
            hs256_secret,
            generated,
            page_token_secret,
        })
    }

    pub fn authenticator(&self, config: &crate::config::Config) -> Result<Authenticator, KeyError> {
        let jwks = (!config.auth.jwks_file.is_empty()).then(|| Path::new(&config.auth.jwks_file));
        Ok(Authenticator::new(
            self.hs256_secret.as_deref(),
            jwks,
            &config.auth.issuer,
            &config.auth.audience,
            config.auth.leeway_s,
        )?)
    }

    pub fn issuer(&self, config: &crate::config::Config) -> Option<TokenIssuer> {
        self.hs256_secret
            .as_deref()
            .map(|secret| TokenIssuer::new(secret, &config.auth.issuer, &config.auth.audience))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The methods of a service (`crm.ticket.v1.TicketService`) as the descriptor set of the
/// contracts declares them, for role tables and their tests.
pub fn service_methods(service: &str) -> Vec<String> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let (package, name) = service.rsplit_once('.').unwrap_or(("", service));
    set.file
        .iter()
        .filter(|file| file.package() == package)
        .flat_map(|file| file.service.iter())
        .filter(|s| s.name() == name)
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect()
}

/// A role table for a service by method verb: reads (`Get`, `BatchGet`, `List`,
/// `Search`, `Watch`) for `readers`, everything else for `writers`. For services whose
/// own issue has not yet written their explicit table.
pub fn verb_role_table(service: &str, readers: &[Role], writers: &[Role]) -> RoleTable {
    let mut table = RoleTable::new();
    for method in service_methods(service) {
        let read = ["Get", "BatchGet", "List", "Search", "Watch"]
            .iter()
            .any(|verb| method.starts_with(verb));
        table.allow(service, &method, if read { readers } else { writers });
    }
    table
}
