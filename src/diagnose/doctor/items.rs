//! Item names, stable for scripts and tests.

/// Reachable and authenticated.
pub const CONNECTION: &str = "connection";
/// Server version.
pub const SERVER: &str = "server version";
/// Pooler in front and its mode.
pub const POOL_MODE: &str = "pool mode";
/// sqlx's default statement cache under concurrency.
pub const DEFAULT_CACHE: &str = "named statements, default cache";
/// `statement_cache_capacity(0)` under concurrency.
pub const CACHE_OFF: &str = "named statements, statement_cache_capacity(0)";
/// `.persistent(false)` outside a transaction.
pub const UNNAMED: &str = "unnamed statements outside a transaction";
/// sqlx's default startup parameters.
pub const STARTUP_DEFAULTS: &str = "startup parameters, sqlx defaults";
/// Server settings in the startup `options`.
pub const STARTUP_OPTIONS: &str = "startup parameters, options=-c jit=off";
/// TLS.
pub const TLS: &str = "TLS";
/// tokio-postgres `query` with parameters (feature `tokio-postgres`).
#[cfg(feature = "tokio-postgres")]
pub const TOKIO_PG_QUERY: &str = "tokio-postgres query with parameters";
/// tokio-postgres `query_typed` (feature `tokio-postgres`).
#[cfg(feature = "tokio-postgres")]
pub const TOKIO_PG_QUERY_TYPED: &str = "tokio-postgres query_typed";
/// tokio-postgres `prepare`d `Statement` reused across transactions
/// (feature `tokio-postgres`).
#[cfg(feature = "tokio-postgres")]
pub const TOKIO_PG_PREPARED: &str = "tokio-postgres prepared Statement across transactions";
/// tokio-postgres `simple_query` (feature `tokio-postgres`).
#[cfg(feature = "tokio-postgres")]
pub const TOKIO_PG_SIMPLE_QUERY: &str = "tokio-postgres simple_query";
/// A tracked `SET` outside a transaction, then another client's transaction.
pub const TRACKED_SET: &str = "SET TIME ZONE outside a transaction";
/// `application_name` as the server sees it.
pub const APPLICATION_NAME: &str = "application_name as the server sees it";
/// sqlx's startup `TimeZone=UTC`.
pub const STARTUP_TIMEZONE: &str = "startup parameters, sqlx's TimeZone=UTC";
/// A dotted custom setting in the startup `options`.
pub const CUSTOM_SETTING: &str = "startup parameters, options=-c app.tenant";
/// Supabase's session pool size plus one clients at once.
pub const SESSION_LIMIT: &str = "16 clients at once";
/// Supavisor's `named_prepared_statements` feature flag: a duplicate
/// statement name as the endpoint answers it.
pub const NAMED_PREPARED_FLAG: &str = "Supavisor's named_prepared_statements flag";
