//! Which images a stack runs, as the settings say: the base image the
//! crate's Dockerfiles build from, or images to run as they are. Building
//! and finding them is `docker/images.rs`'s.

use crate::target::env::Env;
use crate::target::postgres_version::PostgresVersion;

/// What real users pull; the Dockerfiles' default base.
pub const DEFAULT_BASE_IMAGE: &str = "debian:trixie-slim";
/// What `docker/make-base-image.sh` makes without a registry.
pub const LOCAL_BASE_IMAGE: &str = "pgbouncer-fixtures/debian-base:trixie";

/// PostgreSQL 15's base images, in the order they are tried: what real
/// users pull, then what `docker/make-base-image.sh --suite bookworm` makes.
/// (PgBouncer's image is trixie's for either major.)
pub(crate) const BASE_IMAGES_15: [&str; 2] = [
    "debian:bookworm-slim",
    "pgbouncer-fixtures/debian-base:bookworm",
];

/// Which images a stack uses. Unset fields mean: build the crate's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImageSettings {
    /// Base image the Dockerfiles build FROM (`PGBF_BASE_IMAGE`). Unset:
    /// `debian:trixie-slim`, or the locally made base image when only that
    /// exists. A stack of PostgreSQL 15 builds its PostgreSQL image from
    /// `debian:bookworm-slim` (else `pgbouncer-fixtures/debian-base:bookworm`)
    /// whatever this says: trixie has no `postgresql-15`.
    pub base_image: Option<String>,
    /// Use this PostgreSQL image as is (`PGBF_POSTGRES_IMAGE`); it must follow
    /// the crate's entrypoint contract (see `docker/postgres.Dockerfile`).
    pub postgres_image: Option<String>,
    /// Use this PgBouncer image as is (`PGBF_PGBOUNCER_IMAGE`).
    pub pgbouncer_image: Option<String>,
}

impl ImageSettings {
    /// Reads `PGBF_BASE_IMAGE`, `PGBF_POSTGRES_IMAGE`, `PGBF_PGBOUNCER_IMAGE`.
    pub fn from_env(env: &Env) -> ImageSettings {
        ImageSettings {
            base_image: env.get("PGBF_BASE_IMAGE").map(str::to_string),
            postgres_image: env.get("PGBF_POSTGRES_IMAGE").map(str::to_string),
            pgbouncer_image: env.get("PGBF_PGBOUNCER_IMAGE").map(str::to_string),
        }
    }

    /// The base images PostgreSQL `version`'s image may build from, in
    /// order; `None`: the same as PgBouncer's.
    pub(crate) fn postgres_bases(version: PostgresVersion) -> Option<&'static [&'static str]> {
        match version {
            PostgresVersion::V15 => Some(&BASE_IMAGES_15),
            PostgresVersion::V17 => None,
        }
    }

    /// Sets the base image.
    pub fn with_base_image(mut self, image: impl Into<String>) -> Self {
        self.base_image = Some(image.into());
        self
    }

    /// Uses this PostgreSQL image instead of building one.
    pub fn with_postgres_image(mut self, image: impl Into<String>) -> Self {
        self.postgres_image = Some(image.into());
        self
    }

    /// Uses this PgBouncer image instead of building one.
    pub fn with_pgbouncer_image(mut self, image: impl Into<String>) -> Self {
        self.pgbouncer_image = Some(image.into());
        self
    }
}
