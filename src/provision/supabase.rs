//! A Supabase project's folder as a template's source, read the way
//! `supabase db reset` reads it: `supabase/migrations/<version>_<name>.sql`
//! in version order, then the seed files (`supabase/seed.sql`, or the
//! `[db.seed] sql_paths` of `supabase/config.toml`). And what a migration
//! that needs a piece of Supabase this stack lacks is told
//! ([`missing_piece`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The SQL files of a Supabase project, in the order they are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProjectFiles {
    /// `supabase/migrations/*.sql`, by version (the digits before `_`).
    pub migrations: Vec<PathBuf>,
    /// The seed files, in the order `config.toml` names them.
    pub seeds: Vec<PathBuf>,
}

/// The `supabase/` folder of `dir`: `dir` itself when it holds
/// `migrations/` or `config.toml`, else `dir/supabase`.
pub(crate) fn supabase_dir(dir: &Path) -> Result<PathBuf> {
    let holds = |d: &Path| d.join("migrations").is_dir() || d.join("config.toml").is_file();
    if holds(dir) {
        return Ok(dir.to_path_buf());
    }
    let nested = dir.join("supabase");
    if holds(&nested) {
        return Ok(nested);
    }
    Err(Error::Template {
        reason: format!(
            "{} is not a Supabase project: neither it nor {} holds `migrations/` or \
             `config.toml`. Name the project's root (the folder `supabase init` made \
             `supabase/` in) or its `supabase/` folder",
            dir.display(),
            nested.display()
        ),
    })
}

/// Reads the project's migrations and seed files (paths only).
pub(crate) fn project_files(dir: &Path) -> Result<ProjectFiles> {
    let root = supabase_dir(dir)?;
    let migrations = migration_files(&root.join("migrations"))?;
    let config = root.join("config.toml");
    let seed = match std::fs::read_to_string(&config) {
        Ok(text) => seed_config(&text).map_err(|reason| Error::Template {
            reason: format!("{}: {reason}", config.display()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SeedConfig::default(),
        Err(e) => {
            return Err(Error::Template {
                reason: format!("cannot read {}: {e}", config.display()),
            })
        }
    };
    let seeds = match seed.enabled {
        false => Vec::new(),
        true => seed_files(&root, &seed.sql_paths)?,
    };
    Ok(ProjectFiles { migrations, seeds })
}

/// `<digits>_<name>.sql` files of `dir`, by version; other files are
/// skipped as the CLI skips them. No folder: no migrations.
fn migration_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Template {
                reason: format!("cannot read {}: {e}", dir.display()),
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Template {
            reason: format!("cannot read {}: {e}", dir.display()),
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = migration_version(&name) {
            files.push((version.to_string(), entry.path()));
        }
    }
    // Versions compare as numbers of any length: by length, then digits.
    files.sort_by(|(a, _), (b, _)| (a.len(), a).cmp(&(b.len(), b)));
    for pair in files.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(Error::Template {
                reason: format!(
                    "two migrations have version {}: {} and {}; rename one (the Supabase CLI \
                     refuses them too)",
                    pair[0].0,
                    pair[0].1.display(),
                    pair[1].1.display()
                ),
            });
        }
    }
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

/// The version of a migration file's name (`20240101000000_init.sql` ->
/// `20240101000000`), or `None` for a file the CLI does not apply.
fn migration_version(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".sql")?;
    let (version, _) = stem.split_once('_')?;
    (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())).then_some(version)
}

/// What `[db.seed]` says.
#[derive(Debug, PartialEq, Eq)]
struct SeedConfig {
    enabled: bool,
    sql_paths: Vec<String>,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            enabled: true,
            sql_paths: vec!["./seed.sql".to_string()],
        }
    }
}

/// Reads `enabled` and `sql_paths` of the `[db.seed]` table and nothing
/// else of the file (no TOML parser in the crate's dependencies: what this
/// cannot read in that table is an error naming the line, never a guess).
fn seed_config(text: &str) -> std::result::Result<SeedConfig, String> {
    let mut config = SeedConfig::default();
    let mut in_seed = false;
    let mut lines = text.lines().enumerate();
    while let Some((n, raw)) = lines.next() {
        let line = strip_comment(raw).trim();
        if line.starts_with('[') {
            let header = line.trim_start_matches('[').trim_end_matches(']').trim();
            in_seed = header.replace([' ', '"'], "") == "db.seed";
            continue;
        }
        if !in_seed || line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!(
                "line {}: `{}` is not `key = value`",
                n + 1,
                raw.trim()
            ));
        };
        match key.trim() {
            "enabled" => {
                config.enabled = match value.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(format!(
                            "line {}: [db.seed] enabled must be true or false, not `{other}`",
                            n + 1
                        ))
                    }
                }
            }
            "sql_paths" => {
                let mut array = value.trim().to_string();
                // An array may span lines: read on to its closing bracket.
                while !strings_closed(&array) {
                    let Some((_, more)) = lines.next() else {
                        return Err(format!(
                            "line {}: [db.seed] sql_paths is never closed",
                            n + 1
                        ));
                    };
                    array.push(' ');
                    array.push_str(strip_comment(more).trim());
                }
                config.sql_paths = string_array(&array)
                    .map_err(|e| format!("line {}: [db.seed] sql_paths: {e}", n + 1))?;
            }
            _ => {}
        }
    }
    Ok(config)
}

/// The line without a `#` comment outside a string.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Whether an array's text has reached its closing `]`.
fn strings_closed(text: &str) -> bool {
    text.trim_end().ends_with(']')
}

/// `["a", 'b']` -> `a`, `b`: an array of basic or literal strings, without
/// escapes (paths need none).
fn string_array(text: &str) -> std::result::Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("expected an array of strings, found `{text}`"))?;
    let mut items = Vec::new();
    for item in inner.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let quoted = |q: char| item.strip_prefix(q).and_then(|i| i.strip_suffix(q));
        let Some(value) = quoted('"').or_else(|| quoted('\'')) else {
            return Err(format!("`{item}` is not a quoted string"));
        };
        if value.contains('\\') || value.contains(',') {
            return Err(format!(
                "`{item}`: escapes and commas in paths are not read here; rename the file"
            ));
        }
        items.push(value.to_string());
    }
    Ok(items)
}

/// The seed files `sql_paths` names, relative to the `supabase/` folder;
/// a `*` in the file name matches as the CLI's globs do (sorted), and a
/// pattern that matches nothing is skipped as the CLI skips it.
fn seed_files(root: &Path, patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let path = root.join(pattern);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if pattern.contains(['?', '[', '{'])
            || path
                .parent()
                .is_some_and(|p| p.to_string_lossy().contains('*'))
        {
            return Err(Error::Template {
                reason: format!(
                    "[db.seed] sql_paths `{pattern}`: only `*` in the file name is read here; \
                     name the files, or add them with Template::seed_file"
                ),
            });
        }
        let found: Vec<PathBuf> = match name.contains('*') {
            false => path.is_file().then_some(path).into_iter().collect(),
            true => {
                let dir = path.parent().unwrap_or(root);
                let mut matched: Vec<PathBuf> = std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| glob_match(&name, &e.file_name().to_string_lossy()))
                    .map(|e| e.path())
                    .collect();
                matched.sort();
                matched
            }
        };
        for file in found {
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// `*` matches any run of characters; everything else itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Pieces of a Supabase project this stack does not have, by the schema
/// or extension a migration names: the service behind it.
const ABSENT: [(&str, &str); 12] = [
    ("pg_net", "pg_net (Database Webhooks' HTTP client)"),
    ("net", "pg_net's schema `net` (Database Webhooks)"),
    ("pg_cron", "pg_cron (scheduled jobs)"),
    ("cron", "pg_cron's schema `cron`"),
    ("pg_graphql", "pg_graphql (the GraphQL API)"),
    ("graphql", "pg_graphql's schema `graphql`"),
    (
        "graphql_public",
        "the GraphQL API's schema `graphql_public`",
    ),
    ("supabase_vault", "Vault (`supabase_vault`)"),
    ("vault", "Vault's schema `vault`"),
    ("pgsodium", "pgsodium"),
    (
        "realtime",
        "Realtime's schema `realtime` (the `supabase_realtime` publication is here, empty)",
    ),
    (
        "supabase_functions",
        "Database Webhooks' schema `supabase_functions`",
    ),
];

/// When a migration failed for want of an extension or schema this stack
/// lacks: what it is and the way around it (docs/supabase.md).
pub(crate) fn missing_piece(error: &str) -> Option<String> {
    let named = |pattern: &str| -> Option<String> {
        let start = error.find(pattern)? + pattern.len();
        let end = error[start..].find('"')? + start;
        Some(error[start..end].to_string())
    };
    let (kind, name) = if let Some(name) = named("extension \"") {
        ("extension", name)
    } else if let Some(name) = named("schema \"") {
        ("schema", name)
    } else {
        return None;
    };
    let is_missing = error.contains("is not available")
        || error.contains("does not exist")
        || error.contains("could not open extension control file");
    if !is_missing {
        return None;
    }
    let what = ABSENT
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, what)| format!("{what}, a part of Supabase this stack does not have"))
        .unwrap_or_else(|| match kind {
            "extension" => format!(
                "extension `{name}`, which this stack's PostgreSQL (Debian's packages and their \
                 contrib modules) does not ship"
            ),
            _ => format!("schema `{name}`, which neither this stack nor its Supabase shape makes"),
        });
    Some(format!(
        "the migration needs {what}. See docs/supabase.md (what is real, a stand-in or absent); \
         ways around it: create what the migration needs in a seed of the tests' own before it \
         (Template::seed_file runs after migrations, so put a stub migration with an earlier \
         version in the folder the tests read), guard the statement in the migration \
         (`do $$ begin if exists (select from pg_available_extensions where name = '{name}') \
         then .. end if; end $$`), or run that test against a Supabase project \
         (TEST_DATABASE_URL)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_in_version_order_and_other_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("supabase/migrations");
        std::fs::create_dir_all(&m).unwrap();
        for name in [
            "20240102000000_b.sql",
            "20240101000000_a.sql",
            "999_short.sql",
            "README.md",
            "nover.sql",
            "20240103000000_c.sql.bak",
        ] {
            std::fs::write(m.join(name), "select 1;").unwrap();
        }
        std::fs::write(dir.path().join("supabase/seed.sql"), "select 2;").unwrap();
        let files = project_files(dir.path()).unwrap();
        let names: Vec<String> = files
            .migrations
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "999_short.sql",
                "20240101000000_a.sql",
                "20240102000000_b.sql"
            ]
        );
        assert_eq!(files.seeds, [dir.path().join("supabase/./seed.sql")]);
        // The `supabase/` folder itself names the same project.
        assert_eq!(project_files(&dir.path().join("supabase")).unwrap(), files);
        std::fs::write(m.join("20240101000000_dup.sql"), "").unwrap();
        let err = project_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("two migrations have version 20240101000000"),
            "{err}"
        );
    }

    #[test]
    fn seed_paths_come_from_config_toml_in_its_order_globs_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("supabase");
        std::fs::create_dir_all(root.join("seeds")).unwrap();
        for name in ["seeds/b.sql", "seeds/a.sql", "seeds/x.txt", "first.sql"] {
            std::fs::write(root.join(name), "").unwrap();
        }
        std::fs::write(
            root.join("config.toml"),
            "project_id = \"x\"\n[db]\nport = 54322\n[db.seed] # seeds\nenabled = true\n\
             sql_paths = [\n  './first.sql', # the first\n  \"./seeds/*.sql\",\n  \"./missing.sql\",\n]\n\
             [auth]\nenabled = false\n",
        )
        .unwrap();
        let seeds = project_files(dir.path()).unwrap().seeds;
        let names: Vec<String> = seeds
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["first.sql", "seeds/a.sql", "seeds/b.sql"]);
        std::fs::write(root.join("config.toml"), "[db.seed]\nenabled = false\n").unwrap();
        assert!(project_files(dir.path()).unwrap().seeds.is_empty());
        std::fs::write(
            root.join("config.toml"),
            "[db.seed]\nsql_paths = \"seed.sql\"\n",
        )
        .unwrap();
        let err = project_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.toml: line 2: [db.seed] sql_paths"),
            "{err}"
        );
        std::fs::write(root.join("config.toml"), "[db.seed]\nenabled = yes\n").unwrap();
        let err = project_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("enabled must be true or false"), "{err}");
    }

    #[test]
    fn a_folder_that_is_no_project_says_what_to_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = project_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not a Supabase project"), "{err}");
    }

    #[test]
    fn missing_supabase_pieces_are_named_with_the_way_around() {
        let hint =
            missing_piece("error returned from database: extension \"pg_net\" is not available")
                .unwrap();
        assert!(
            hint.contains("pg_net (Database Webhooks' HTTP client)"),
            "{hint}"
        );
        assert!(hint.contains("docs/supabase.md"), "{hint}");
        let hint = missing_piece("schema \"vault\" does not exist").unwrap();
        assert!(hint.contains("Vault's schema `vault`"), "{hint}");
        let hint = missing_piece("extension \"postgis\" is not available").unwrap();
        assert!(hint.contains("does not ship"), "{hint}");
        assert_eq!(missing_piece("relation \"x\" does not exist"), None);
        assert_eq!(missing_piece("schema \"x\" already exists"), None);
    }
}
