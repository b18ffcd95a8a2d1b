//! Template databases: migrations and seed files applied once per distinct
//! content, then cloned for each test (`CREATE DATABASE .. TEMPLATE`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use once_cell::sync::Lazy;

use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

use crate::connect::quote::{quote_ident, quote_literal};
use crate::connect::sqlx_compat::{audited, run_migrations, Executor};
use crate::connect::Endpoint;
use crate::contract::{PREPARED_TABLE, SUPABASE_BASE, TEMPLATE_PREFIX};
use crate::error::{sql_error, Error, Result};
use crate::provision::database::Step;
use crate::provision::memory;
use crate::support::digest::hex;
use crate::support::sync::lock;
use crate::target::memory::databases_share;
use crate::target::DbUrl;

/// Bumped when the way templates are built changes.
const TEMPLATE_FORMAT: &str = "pgbouncer-fixtures template v1";

#[derive(Clone, Debug)]
enum Migrations {
    None,
    Dir(PathBuf),
    Migrator(Arc<Migrator>),
    /// A Supabase project's folder (`supabase/migrations`, seeds).
    SupabaseProject(PathBuf),
}

/// What every test database starts from: sqlx migrations and seed SQL files.
///
/// The crate builds one template database per distinct content (a hash of
/// the migrations, the seed files and this crate's template format), once,
/// and clones it for each test. Later tests, processes and runs reuse it
/// while the content is unchanged; a changed migration makes a new template
/// and the stale one is removed.
///
/// ```no_run
/// use pgbouncer_fixtures::{Template, TestDb};
///
/// # async fn example() -> pgbouncer_fixtures::Result<()> {
/// let template = Template::new().migrations_dir("./migrations").seed_file("./tests/seed.sql");
/// let db = TestDb::builder().template(template).build().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Template {
    migrations: Migrations,
    seeds: Vec<PathBuf>,
    prepared: Option<usize>,
}

impl Default for Template {
    fn default() -> Self {
        Template::new()
    }
}

/// A template resolved to its content: name, hash and how to build it.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedTemplate {
    /// [`TEMPLATE_PREFIX`] and the hash: `pgbf_tpl_<hash>`.
    pub name: String,
    /// Identifies the source (the migrations' location), so that stale
    /// templates of the same source can be found and removed.
    pub source: String,
    pub migrator: Option<Arc<Migrator>>,
    pub seeds: Vec<(PathBuf, String)>,
    /// Clones to keep ready.
    pub prepared: usize,
    /// The database it copies (the Supabase-shaped base), `None`: template1.
    pub base: Option<String>,
    /// A Supabase project's migrations, each run as one script, in order
    /// (before `seeds`, which then hold the project's seed files first).
    pub scripts: Vec<(PathBuf, String)>,
}

impl Template {
    /// An empty template (no migrations, no seeds): add some.
    pub fn new() -> Template {
        Template {
            migrations: Migrations::None,
            seeds: Vec::new(),
            prepared: None,
        }
    }

    /// sqlx migrations from this directory (as `sqlx migrate` reads it).
    pub fn migrations_dir(mut self, dir: impl Into<PathBuf>) -> Template {
        self.migrations = Migrations::Dir(dir.into());
        self
    }

    /// An already loaded migrator, e.g. `sqlx::migrate!()`.
    pub fn migrator(mut self, migrator: Migrator) -> Template {
        self.migrations = Migrations::Migrator(Arc::new(migrator));
        self
    }

    /// A Supabase project's folder, applied as `supabase db reset` applies
    /// it: `supabase/migrations/<version>_<name>.sql` in version order,
    /// each file as one script, then `supabase/seed.sql` (or the
    /// `[db.seed] sql_paths` of `supabase/config.toml`). `dir` is the
    /// project's root (holding `supabase/`) or its `supabase/` folder.
    /// Replaces [`migrations_dir`](Self::migrations_dir) /
    /// [`migrator`](Self::migrator); seed files added with
    /// [`seed_file`](Self::seed_file) run after the project's.
    ///
    /// The project's objects need Supabase's (`auth.users`, `anon`, the
    /// `extensions` schema): the crate's stacks give every database that
    /// shape (see docs/supabase.md). A migration that needs a piece the
    /// stack lacks (pg_net, Vault, ...) fails with an error naming it.
    ///
    /// ```no_run
    /// use pgbouncer_fixtures::{Template, TestDb};
    ///
    /// # async fn example() -> pgbouncer_fixtures::Result<()> {
    /// let db = TestDb::builder().template(Template::new().supabase_project(".")).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn supabase_project(mut self, dir: impl Into<PathBuf>) -> Template {
        self.migrations = Migrations::SupabaseProject(dir.into());
        self
    }

    /// A SQL file run after the migrations (in the order added).
    pub fn seed_file(mut self, path: impl Into<PathBuf>) -> Template {
        self.seeds.push(path.into());
        self
    }

    /// How many clones to keep ready in the background (default:
    /// `PGBF_PREPARED_CLONES`, else 2). 0 clones on demand.
    pub fn prepared_clones(mut self, n: usize) -> Template {
        self.prepared = Some(n);
        self
    }

    pub(crate) async fn resolve(
        &self,
        default_prepared: usize,
        base: Option<&str>,
    ) -> Result<ResolvedTemplate> {
        let mut project_seeds = Vec::new();
        let mut scripts = Vec::new();
        let (migrator, source) = match &self.migrations {
            Migrations::None => (None, "no migrations".to_string()),
            Migrations::SupabaseProject(dir) => {
                let files = crate::provision::supabase::project_files(dir)?;
                scripts = read_all(&files.migrations, "migration")?;
                project_seeds = files.seeds;
                (
                    None,
                    format!("supabase project {}", absolute(dir).display()),
                )
            }
            Migrations::Dir(dir) => {
                let migrator = read_migrations(dir).await?;
                (Some(migrator), format!("dir {}", absolute(dir).display()))
            }
            Migrations::Migrator(m) => {
                let first = m
                    .iter()
                    .next()
                    .map(|m| format!("{} {}", m.version, m.description));
                (
                    Some(m.clone()),
                    format!("migrator starting at {}", first.unwrap_or_default()),
                )
            }
        };
        let mut hash = Sha256::new();
        hash.update(TEMPLATE_FORMAT.as_bytes());
        // What it is built on: a template on the Supabase-shaped base is
        // not the one on template1.
        hash.update(format!("base {}\n", base.unwrap_or("template1")).as_bytes());
        for (path, sql) in &scripts {
            hash.update(b"script ");
            hash.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hash.update(sql.len().to_be_bytes());
            hash.update(sql.as_bytes());
        }
        if let Some(m) = &migrator {
            for migration in m.iter() {
                hash.update(migration.version.to_be_bytes());
                hash.update(migration.description.as_bytes());
                hash.update(&*migration.checksum);
                hash.update([u8::from(migration.no_tx)]);
            }
        }
        let mut seeds = Vec::new();
        for path in project_seeds.iter().chain(&self.seeds) {
            let sql = std::fs::read_to_string(path).map_err(|e| Error::Template {
                reason: format!("cannot read seed file {}: {e}", path.display()),
            })?;
            hash.update(sql.len().to_be_bytes());
            hash.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hash.update(sql.as_bytes());
            seeds.push((path.clone(), sql));
        }
        let digest = hex(&hash.finalize()[..8]);
        // Per base too: the bare and the Supabase-shaped template of one
        // folder are two sources, neither the other's stale version.
        let source = format!("{source} on {}", base.unwrap_or("template1"));
        let source = hex(&Sha256::digest(source.as_bytes())[..8]);
        Ok(ResolvedTemplate {
            name: format!("{TEMPLATE_PREFIX}{digest}"),
            source,
            migrator,
            seeds,
            prepared: self.prepared.unwrap_or(default_prepared),
            base: base.map(str::to_string),
            scripts,
        })
    }
}

/// The text of each file, or an error naming the one that cannot be read.
fn read_all(paths: &[PathBuf], what: &str) -> Result<Vec<(PathBuf, String)>> {
    paths
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|sql| (path.clone(), sql))
                .map_err(|e| Error::Template {
                    reason: format!("cannot read {what} {}: {e}", path.display()),
                })
        })
        .collect()
}

/// A failed migration or seed's message, with what it needs that the
/// stack lacks when that is why (a Supabase piece, named).
fn failed(what: String, error: &dyn std::fmt::Display) -> Error {
    let text = error.to_string();
    let reason = match crate::provision::supabase::missing_piece(&text) {
        Some(hint) => format!("{what}: {text}; {hint}"),
        None => format!("{what}: {text}"),
    };
    Error::Template { reason }
}

/// What a migrations directory held: each entry's name and, for files,
/// their bytes, in order.
type DirContent = Vec<(std::ffi::OsString, Option<Vec<u8>>)>;

/// Migration directories this process has read, by path, with what they
/// held then: every test resolves its template, and sqlx's reading (a file
/// at a time through tokio's blocking pool) and checksums cost ~0.5 ms a
/// test. Comparing the bytes read again at once is ~10x cheaper and, unlike
/// modification times (a tick of a few ms), never misses an edit.
static READ_DIRS: Lazy<Mutex<HashMap<PathBuf, ReadDir>>> = Lazy::new(Mutex::default);

/// A directory's content when read, and its migrations.
type ReadDir = (DirContent, Arc<Migrator>);

/// The migrations of `dir`, parsed once per content.
async fn read_migrations(dir: &Path) -> Result<Arc<Migrator>> {
    let content = dir_content(dir);
    if let Some(content) = &content {
        let read = lock(&READ_DIRS);
        if let Some((seen, migrator)) = read.get(dir) {
            if seen == content {
                return Ok(migrator.clone());
            }
        }
    }
    let migrator = Arc::new(Migrator::new(dir).await.map_err(|e| Error::Template {
        reason: format!("cannot read migrations from {}: {e}", dir.display()),
    })?);
    if let Some(content) = content {
        let mut read = lock(&READ_DIRS);
        read.insert(dir.to_path_buf(), (content, migrator.clone()));
    }
    Ok(migrator)
}

/// What `dir` holds, or `None` when it cannot be read (sqlx then says why).
fn dir_content(dir: &Path) -> Option<DirContent> {
    let mut content = std::fs::read_dir(dir)
        .ok()?
        .map(|entry| {
            let entry = entry.ok()?;
            let bytes = match entry.file_type().ok()?.is_dir() {
                true => None,
                false => Some(std::fs::read(entry.path()).ok()?),
            };
            Some((entry.file_name(), bytes))
        })
        .collect::<Option<DirContent>>()?;
    content.sort();
    Some(content)
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl ResolvedTemplate {
    fn comment(&self) -> String {
        format!("pgbouncer-fixtures template source={}", self.source)
    }

    /// Builds the template on the server behind `admin` (a direct URL with
    /// the right to create databases) unless it exists; removes stale
    /// templates of the same source. Safe against concurrent callers in any
    /// number of processes: they serialise on an advisory lock of a direct
    /// session, and only a finished template is marked `IS_TEMPLATE`.
    /// `budget`: the stack's memory budget, if any, and the tests running
    /// at once: a build that fills the databases' tmpfs fails with
    /// [`Error::MemoryBudget`].
    pub(crate) async fn ensure(&self, admin: &DbUrl, budget: Option<(u64, usize)>) -> Result<()> {
        let options = crate::connect::options(admin, "pgbouncer-fixtures template");
        let mut conn = PgConnection::connect_with(&options)
            .await
            .map_err(|e| crate::connect::connect_error(Endpoint::Direct, admin, e))?;
        let key = format!(
            "hashtext('pgbouncer-fixtures'), hashtext({})",
            quote_literal(&self.name)
        );
        let lock = format!("select pg_advisory_lock({key})");
        conn.execute(lock.as_str())
            .await
            .map_err(sql_error("locking the template"))?;
        let result = self.build_locked(&mut conn, admin, budget).await;
        let unlock = format!("select pg_advisory_unlock({key})");
        let _ = conn.execute(unlock.as_str()).await;
        let _ = conn.close().await;
        result
    }

    /// Under the template's lock: builds it unless a finished one is there,
    /// then removes stale ones.
    async fn build_locked(
        &self,
        conn: &mut PgConnection,
        admin: &DbUrl,
        budget: Option<(u64, usize)>,
    ) -> Result<()> {
        let ready: Option<bool> =
            sqlx::query_scalar("select datistemplate from pg_database where datname = $1")
                .bind(&self.name)
                .persistent(false)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error("looking for the template"))?;
        if ready != Some(true) {
            let started = std::time::Instant::now();
            self.build(conn, admin, budget).await?;
            tracing::info!(template = %self.name, elapsed_ms = started.elapsed().as_millis() as u64, "template built");
        }
        self.remove_stale(conn).await
    }

    /// Builds the template afresh: a database, the migrations and seeds,
    /// then marked a template nobody may connect to. A failed build leaves
    /// no database behind; one that filled the databases' tmpfs on a stack
    /// with a `budget` is [`Error::MemoryBudget`], with a lower bound of its size.
    async fn build(
        &self,
        conn: &mut PgConnection,
        admin: &DbUrl,
        budget: Option<(u64, usize)>,
    ) -> Result<()> {
        let mut full = false;
        let Err(error) = self.fill(conn, admin, &mut full).await else {
            return Ok(());
        };
        let full = full || memory::disk_full(&error);
        if let Err(e) = conn
            .execute(Step::DropDatabase(self.name.clone()).sql().as_str())
            .await
        {
            tracing::warn!(template = %self.name, error = %e, "could not drop a failed template");
        }
        match (budget, full) {
            (Some((budget, tests)), true) => {
                tracing::debug!(template = %self.name, error = %error, "the template filled the databases' tmpfs");
                // A lower bound of its size: the room the other databases
                // left it (an aborted seed's rows are gone from its size).
                let others: Option<i64> = sqlx::query_scalar(
                    "select sum(pg_database_size(oid))::int8 from pg_database \
                     where datname like 'pgbf\\_%' and datname <> $1",
                )
                .bind(SUPABASE_BASE)
                .persistent(false)
                .fetch_one(&mut *conn)
                .await
                .unwrap_or_default();
                let others = others.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
                let bytes = databases_share(budget).saturating_sub(others);
                Err(memory::filled(
                    &self.name,
                    bytes,
                    budget,
                    tests,
                    memory::Filling::Build,
                ))
            }
            _ => Err(error),
        }
    }

    /// The build's statements; `full`: set when one failed for want of
    /// space (the error then says it in words only).
    async fn fill(&self, conn: &mut PgConnection, admin: &DbUrl, full: &mut bool) -> Result<()> {
        let name = quote_ident(&self.name);
        // A template that is not marked ready is the leftover of a crashed build.
        // FILE_COPY, as for its clones (`Step::CloneDatabase`): the default
        // (WAL_LOG) took ~26 ms of a cold run's start, this ~12 ms.
        let create = match &self.base {
            Some(base) => format!(
                "CREATE DATABASE {name} TEMPLATE {} STRATEGY FILE_COPY",
                quote_ident(base)
            ),
            None => format!("CREATE DATABASE {name} STRATEGY FILE_COPY"),
        };
        for sql in [Step::DropDatabase(self.name.clone()).sql(), create] {
            run(conn, &sql).await?;
        }
        let target = admin.with_database(&self.name);
        let options = crate::connect::options(&target, "pgbouncer-fixtures template");
        let mut tpl = PgConnection::connect_with(&options)
            .await
            .map_err(|e| crate::connect::connect_error(Endpoint::Direct, &target, e))?;
        // A failed step in words, noting whether it ran out of space.
        let mut step_failed = |what: String, e: &(dyn std::error::Error + 'static)| {
            *full |= memory::disk_full(e);
            failed(what, e)
        };
        if let Some(migrator) = &self.migrator {
            run_migrations(migrator, &mut tpl)
                .await
                .map_err(|e| step_failed("migrations failed on the template".into(), &e))?;
        }
        // A Supabase project's migration: one script (the simple protocol
        // runs its statements as one implicit transaction, as the CLI
        // applies a file).
        for (path, sql) in &self.scripts {
            tpl.execute(sql.as_str())
                .await
                .map_err(|e| step_failed(format!("migration {} failed", path.display()), &e))?;
        }
        for (path, sql) in &self.seeds {
            tpl.execute(sql.as_str())
                .await
                .map_err(|e| step_failed(format!("seed file {} failed", path.display()), &e))?;
        }
        tpl.close()
            .await
            .map_err(sql_error("closing the template connection"))?;
        // Nobody may connect to it any more: open sessions would block cloning.
        for sql in [
            format!("ALTER DATABASE {name} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"),
            format!(
                "COMMENT ON DATABASE {name} IS {}",
                quote_literal(&self.comment())
            ),
        ] {
            run(conn, &sql).await?;
        }
        Ok(())
    }

    /// Removes the stale templates of the same source (built from older
    /// content) and their prepared clones.
    async fn remove_stale(&self, conn: &mut PgConnection) -> Result<()> {
        // The prefix as a LIKE pattern: its `_` taken literally.
        let templates = format!("{}%", TEMPLATE_PREFIX.replace('_', "\\_"));
        let stale: Vec<String> = sqlx::query_scalar(
            "select datname::text from pg_database d \
             where datname like $3 and datname <> $1 \
             and shobj_description(d.oid, 'pg_database') = $2",
        )
        .bind(&self.name)
        .bind(self.comment())
        .bind(templates)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error("looking for stale templates"))?;
        let delete_clones =
            format!("delete from {PREPARED_TABLE} where template = $1 returning name");
        for old_raw in stale {
            let old = quote_ident(&old_raw);
            for sql in [
                format!("ALTER DATABASE {old} WITH IS_TEMPLATE false"),
                Step::DropDatabase(old_raw.clone()).sql(),
            ] {
                if let Err(e) = conn.execute(sql.as_str()).await {
                    tracing::warn!(error = %e, "could not remove a stale template");
                }
            }
            // Its prepared clones in the stack's pool go too (no pool table
            // on an external server: nothing to do there).
            let clones: Vec<String> = sqlx::query_scalar(audited(&delete_clones))
                .bind(&old_raw)
                .persistent(false)
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_default();
            for clone in clones {
                let sql = Step::DropDatabase(clone).sql();
                if let Err(e) = conn.execute(sql.as_str()).await {
                    tracing::warn!(error = %e, "could not remove a stale prepared clone");
                }
            }
            tracing::info!(template = %old, "stale template removed");
        }
        Ok(())
    }
}

/// Runs one admin statement on `conn`.
async fn run(conn: &mut PgConnection, sql: &str) -> Result<()> {
    conn.execute(sql)
        .await
        .map(|_| ())
        .map_err(sql_error(format!("`{sql}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrations_are_read_again_when_a_file_changes_even_within_a_clock_tick() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("0001_items.sql");
        std::fs::write(&file, "create table a (id int);").unwrap();
        let template = Template::new().migrations_dir(dir.path());
        let first = template.resolve(2, None).await.unwrap();
        let again = template.resolve(2, None).await.unwrap();
        assert_eq!(again.name, first.name);
        assert!(
            Arc::ptr_eq(
                first.migrator.as_ref().unwrap(),
                again.migrator.as_ref().unwrap()
            ),
            "unchanged migrations are not read and parsed again"
        );
        // Same length, same directory, at once: a modification time could
        // not tell these apart.
        std::fs::write(&file, "create table b (id int);").unwrap();
        let edited = template.resolve(2, None).await.unwrap();
        assert_ne!(edited.name, first.name, "the edit makes a new template");
        std::fs::write(dir.path().join("0002_more.sql"), "select 1;").unwrap();
        let added = template.resolve(2, None).await.unwrap();
        assert_ne!(
            added.name, edited.name,
            "an added file makes a new template"
        );
        assert_eq!(added.migrator.as_ref().unwrap().iter().count(), 2);
    }
}
