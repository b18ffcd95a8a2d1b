//! The two images a stack runs (PostgreSQL 15 or 17, PgBouncer), their embedded
//! Dockerfiles, and building them when missing.

use std::time::Instant;

use bollard::Docker;
use sha2::{Digest, Sha256};
use testcontainers::core::BuildImageOptions;
use testcontainers::runners::AsyncBuilder;
use testcontainers::GenericBuildableImage;

use crate::contract::{
    PGBOUNCER_CONTEXT, PGBOUNCER_DOCKERFILE, POSTGRES_CONTEXT, POSTGRES_DOCKERFILE,
};
use crate::docker::client::call_unless;
use crate::error::{Error, Result};
use crate::support::digest::hex;
use crate::target::images::{ImageSettings, DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE};
use crate::target::postgres_version::PostgresVersion;

/// Repository name of the PostgreSQL image the crate builds.
pub const POSTGRES_REPOSITORY: &str = "pgbouncer-fixtures/postgres";
/// Repository name of the PgBouncer image the crate builds.
pub const PGBOUNCER_REPOSITORY: &str = "pgbouncer-fixtures/pgbouncer";

/// Where the base-image script lives in this crate's sources.
pub const BASE_IMAGE_SCRIPT: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/docker/make-base-image.sh");

/// An image reference split as testcontainers wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository, e.g. `pgbouncer-fixtures/postgres`.
    pub name: String,
    /// Tag.
    pub tag: String,
}

impl ImageRef {
    fn parse(reference: &str) -> ImageRef {
        // A ':' after the last '/' separates the tag (a registry port may hold one too).
        match reference.rfind(':') {
            Some(i) if !reference[i..].contains('/') => ImageRef {
                name: reference[..i].to_string(),
                tag: reference[i + 1..].to_string(),
            },
            _ => ImageRef {
                name: reference.to_string(),
                tag: "latest".to_string(),
            },
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// The images a stack will run, present on the Docker host.
#[derive(Clone, Debug)]
pub struct ResolvedImages {
    /// The PostgreSQL image.
    pub postgres: ImageRef,
    /// The PgBouncer image.
    pub pgbouncer: ImageRef,
}

/// The ID of image `reference`; `None` when it is absent, or Docker does
/// not say (then the caller builds, or names the image as missing).
async fn image_id(docker: &Docker, reference: &str) -> Option<String> {
    let action = format!("inspect image {reference}");
    call_unless(&[404], &action, docker.inspect_image(reference))
        .await
        .ok()
        .flatten()
        .and_then(|i| i.id)
}

/// Picks the base image: the explicit one, else `debian:trixie-slim` when
/// present, else the locally made one when present, else `debian:trixie-slim`
/// (which the build will then try to pull).
async fn choose_base(docker: &Docker, settings: &ImageSettings) -> (String, Option<String>) {
    if let Some(base) = &settings.base_image {
        return (base.clone(), image_id(docker, base).await);
    }
    first_present(docker, &[DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE]).await
}

/// The first of `candidates` present on the host, else the first (which
/// the build will then try to pull).
async fn first_present(docker: &Docker, candidates: &[&str]) -> (String, Option<String>) {
    for candidate in candidates {
        if let Some(id) = image_id(docker, candidate).await {
            return (candidate.to_string(), Some(id));
        }
    }
    (candidates[0].to_string(), None)
}

/// Makes sure both images exist, building the missing ones; `before_build`
/// runs before each build (none when both are present).
pub async fn ensure_images<C, Fut>(
    docker: &Docker,
    settings: &ImageSettings,
    postgres_version: PostgresVersion,
    before_build: C,
) -> Result<ResolvedImages>
where
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (base, base_id) = choose_base(docker, settings).await;
    let postgres = match &settings.postgres_image {
        Some(reference) => existing(docker, reference, "PGBF_POSTGRES_IMAGE").await?,
        None => {
            let (pg_base, pg_base_id) = match ImageSettings::postgres_bases(postgres_version) {
                Some(candidates) => first_present(docker, candidates).await,
                None => (base.clone(), base_id.clone()),
            };
            let major = postgres_version.major().to_string();
            build(
                docker,
                &before_build,
                Build {
                    repository: POSTGRES_REPOSITORY,
                    dockerfile: POSTGRES_DOCKERFILE,
                    files: &POSTGRES_CONTEXT,
                    base: &pg_base,
                    base_id: pg_base_id.as_deref(),
                    args: &[("PG_MAJOR", &major)],
                    suite: postgres_version.debian_suite(),
                },
            )
            .await?
        }
    };
    let pgbouncer = match &settings.pgbouncer_image {
        Some(reference) => existing(docker, reference, "PGBF_PGBOUNCER_IMAGE").await?,
        None => {
            build(
                docker,
                &before_build,
                Build {
                    repository: PGBOUNCER_REPOSITORY,
                    dockerfile: PGBOUNCER_DOCKERFILE,
                    files: &PGBOUNCER_CONTEXT,
                    base: &base,
                    base_id: base_id.as_deref(),
                    args: &[],
                    suite: "trixie",
                },
            )
            .await?
        }
    };
    Ok(ResolvedImages {
        postgres,
        pgbouncer,
    })
}

async fn existing(docker: &Docker, reference: &str, var: &'static str) -> Result<ImageRef> {
    if image_id(docker, reference).await.is_none() {
        return Err(Error::ImageUnavailable {
            image: reference.to_string(),
            reason: format!("{var} names it, but it is not on this Docker host"),
            fix: format!("Build or load that image, or unset {var} to let the crate build its own"),
        });
    }
    Ok(ImageRef::parse(reference))
}

/// One image to build: its Dockerfile, files, base and build arguments.
struct Build<'a> {
    repository: &'a str,
    dockerfile: &'a str,
    files: &'a [(&'a str, &'a str)],
    base: &'a str,
    base_id: Option<&'a str>,
    /// Build arguments beyond `BASE_IMAGE`.
    args: &'a [(&'a str, &'a str)],
    /// The Debian release the base must be, for the error's fix.
    suite: &'a str,
}

async fn build<C, Fut>(docker: &Docker, before_build: &C, spec: Build<'_>) -> Result<ImageRef>
where
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let Build {
        repository,
        dockerfile,
        files,
        base,
        base_id,
        args,
        suite,
    } = spec;
    // The tag is a hash of everything that shapes the image, so an edited
    // Dockerfile or a rebuilt base never reuses a stale image.
    let mut h = Sha256::new();
    h.update(dockerfile.as_bytes());
    for (content, target) in files {
        h.update(target.as_bytes());
        h.update(content.as_bytes());
    }
    h.update(base.as_bytes());
    h.update(base_id.unwrap_or("").as_bytes());
    for (name, value) in args {
        h.update(format!("{name}={value}").as_bytes());
    }
    let tag = hex(&h.finalize()[..8]);
    let image = ImageRef {
        name: repository.to_string(),
        tag,
    };

    if image_id(docker, &image.to_string()).await.is_some() {
        return Ok(image);
    }
    before_build().await?;
    let started = Instant::now();
    let mut buildable =
        GenericBuildableImage::new(&image.name, &image.tag).with_dockerfile_string(dockerfile);
    for (content, target) in files {
        buildable = buildable.with_data(content.as_bytes().to_vec(), *target);
    }
    let mut options = BuildImageOptions::new()
        .with_skip_if_exists(true)
        .with_build_arg("BASE_IMAGE", base);
    for (name, value) in args {
        options = options.with_build_arg(*name, *value);
    }
    let _built =
        buildable
            .build_image_with(options)
            .await
            .map_err(|e| Error::ImageUnavailable {
                image: image.to_string(),
                reason: format!("building it from base image {base} failed: {e}"),
                fix: if suite == "trixie" {
                    format!(
                        "On a machine without a container registry, make a base image from \
                         Debian's packages with `{BASE_IMAGE_SCRIPT}` (it is used automatically \
                         when {DEFAULT_BASE_IMAGE} is absent), or set PGBF_BASE_IMAGE to a \
                         Debian trixie image you have"
                    )
                } else {
                    format!(
                        "PostgreSQL 15 (PGBF_POSTGRES_VERSION=15) builds from Debian {suite}: \
                         pull debian:{suite}-slim, or, without a container registry, run \
                         `{BASE_IMAGE_SCRIPT} --suite {suite}` (it is used automatically when \
                         debian:{suite}-slim is absent)"
                    )
                },
            })?;
    tracing::debug!(image = %image, base, elapsed_ms = started.elapsed().as_millis() as u64, "image ready");
    Ok(image)
}
