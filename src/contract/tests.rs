//! The scripts and SQL files spell every shared value as the contract
//! does, and the image ships exactly the files the crate embeds.

use super::*;

fn docker_file(name: &str) -> String {
    let path = format!("{}/docker/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn context_text(path: &str) -> &'static str {
    POSTGRES_CONTEXT
        .iter()
        .find(|(_, p)| *p == path)
        .unwrap_or_else(|| panic!("{path} is not in the build context"))
        .0
}

#[test]
fn every_sql_file_is_in_the_build_context_and_so_in_the_image_tag() {
    let dir = format!("{}/docker/sql", env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut shipped: Vec<String> = POSTGRES_CONTEXT
        .iter()
        .filter_map(|(_, p)| p.strip_prefix("./sql/").map(str::to_string))
        .collect();
    shipped.sort();
    assert_eq!(on_disk, shipped);
    for (text, path) in POSTGRES_CONTEXT {
        assert_eq!(text, docker_file(path.trim_start_matches("./")), "{path}");
    }
    assert!(POSTGRES_DOCKERFILE.contains(&format!("COPY sql/ {IMAGE_SQL_DIR}/")));
    assert!(POSTGRES_DOCKERFILE.contains("COPY watchdog.sh "));
}

#[test]
fn the_one_ddl_is_what_both_sides_run() {
    // The crate's statements are the lines of the file the image loads.
    let statements: Vec<&str> = table_statements().collect();
    assert_eq!(statements.len(), 4);
    for (statement, table) in
        statements
            .iter()
            .zip([PREPARED_TABLE, GARBAGE_TABLE, CLAIMS_TABLE, DEMAND_TABLE])
    {
        assert!(
            statement.starts_with(&format!("create table if not exists {table} (")),
            "{statement}"
        );
        assert!(TABLES_SQL.contains(&format!("{statement};\n")));
    }
    assert_eq!(context_text("./sql/tables.sql"), TABLES_SQL);
    // The image loads that file, and only there are the tables made.
    assert!(SETUP_SQL.contains("\\ir tables.sql\n"));
    for (text, path) in POSTGRES_CONTEXT {
        // The Supabase shape's tables (auth.users, storage.*) are its own.
        if path != "./sql/tables.sql" && path != "./sql/supabase-schema.sql" {
            assert!(!text.contains("create table"), "{path} makes a table");
        }
    }
}

#[test]
fn setup_loads_the_files_a_test_loads_in_the_same_order() {
    let included: Vec<&str> = SETUP_SQL
        .lines()
        .filter_map(|l| l.strip_prefix("\\ir "))
        .collect();
    let expected: Vec<&str> = SETUP_FILES
        .iter()
        .map(|text| {
            let (_, path) = POSTGRES_CONTEXT.iter().find(|(t, _)| t == text).unwrap();
            path.trim_start_matches("./sql/")
        })
        .collect();
    assert_eq!(included, expected);
}

#[test]
fn the_image_spells_the_shared_names_as_the_crate_does() {
    let entrypoint = context_text("./postgres-entrypoint.sh");
    let watchdog = context_text("./watchdog.sh");
    let pgbouncer = PGBOUNCER_CONTEXT[0].0;
    for var in [
        ENV_PASSWORD,
        ENV_PASSWORD_SCRAM,
        ENV_MAX_CONNECTIONS,
        ENV_REAP_AFTER_SECS,
        ENV_LEASE_GRACE_SECS,
        ENV_MAX_WARM_CLONES,
        ENV_JANITOR_SETTLE_SECS,
        ENV_REQUIRE_TLS,
        ENV_TLS_CERT,
        ENV_TLS_KEY,
        ENV_PORT,
        ENV_POOLER_PORT,
        ENV_LISTEN_ADDR,
    ] {
        assert!(entrypoint.contains(&format!("${{{var}")), "{var}");
    }
    for var in [
        ENV_PASSWORD,
        ENV_PASSWORD_SCRAM,
        ENV_PGBOUNCER_INI,
        ENV_TLS_CA,
        ENV_TLS_CERT,
        ENV_TLS_KEY,
        ENV_PORT,
        ENV_POOLER_PORT,
    ] {
        assert!(pgbouncer.contains(&format!("${{{var}")), "{var}");
    }
    assert!(pgbouncer.contains(&format!("conf={PGBOUNCER_DIR}\n")));
    for path in [
        PGBOUNCER_USERLIST,
        PGBOUNCER_TLS_CERT,
        PGBOUNCER_TLS_KEY,
        PGBOUNCER_TLS_CA,
    ] {
        let name = path.strip_prefix(PGBOUNCER_DIR).unwrap();
        assert!(pgbouncer.contains(&format!("\"$conf{name}\"")), "{path}");
    }
    assert!(entrypoint.contains(&format!("{ENV_ROLE_SECRET}=\"$secret\"")));
    assert!(PASSWORD_SQL.contains(&format!("\\getenv secret {ENV_ROLE_SECRET}\n")));
    assert!(watchdog.contains(&format!("lease_mark={LEASE_MARK}\n")));
    assert!(watchdog.contains(&format!("janitor_mark={JANITOR_MARK}\n")));
    assert!(entrypoint.contains(&format!("sql={IMAGE_SQL_DIR}\n")));
    assert!(entrypoint.contains(&format!("data={POSTGRES_DATA_TMPFS}/data\n")));
    assert!(entrypoint.contains(&format!("databases={POSTGRES_DATABASES_TMPFS}\n")));
    assert!(entrypoint.contains("ln -s \"$databases/base\" \"$data/base\"\n"));
    let log = LOG_FILE.rsplit_once('/').unwrap();
    assert!(entrypoint.contains(&format!("log_directory={}", log.0)));
    assert!(entrypoint.contains("-c log_filename=postgresql ") && log.1 == "postgresql.json");
    assert!(LEASES_SQL.contains(&format!("application_name like '{LEASE_APP}%'")));
    assert!(LEASES_SQL.contains(&format!("'{POOLED_LEASE_APP} pid %'")));
    assert!(SETTINGS_SQL.contains(&format!("application_name={JANITOR_APP} ")));
    // pgbf_clone_name keeps what follows the template prefix, as clone_stem.
    let keep_from = TEMPLATE_PREFIX.len() + 1;
    assert!(JANITOR_SQL.contains(&format!("left('c' || substr(tpl, {keep_from}), 40)")));
    assert_eq!(clone_stem("pgbf_tpl_0a1b"), "c0a1b");
}

#[test]
fn no_sql_text_in_the_shell_scripts() {
    let scripts = [
        context_text("./postgres-entrypoint.sh"),
        context_text("./watchdog.sh"),
        PGBOUNCER_CONTEXT[0].0,
    ];
    let sql_words = [
        "create ", "insert ", "update ", "delete ", "alter ", "drop ", "format(", " where ",
    ];
    for script in scripts {
        for line in script.lines() {
            let code = line.trim_start();
            if code.starts_with('#') {
                continue;
            }
            let lower = code.to_lowercase();
            for word in sql_words {
                assert!(!lower.contains(word), "SQL in a script: {line}");
            }
            // The one statement a script sends: a call of pgbf_tick.
            if lower.contains("select") {
                assert!(lower.contains("from pgbf_tick("), "SQL in a script: {line}");
            }
        }
    }
}

#[test]
fn the_image_build_makes_the_supabase_base_the_crate_clones() {
    assert!(SUPABASE_BASE_SQL.contains(&format!("create database {SUPABASE_BASE};\n")));
    assert!(SUPABASE_BASE_SQL.contains(&format!("\\connect {SUPABASE_BASE}\n")));
    assert!(SUPABASE_BASE_SQL.contains("\\ir supabase-roles.sql\n"));
    assert!(SUPABASE_BASE_SQL.contains("\\ir supabase-schema.sql\n"));
    assert!(SUPABASE_BASE_SQL.contains(&format!(
        "alter database {SUPABASE_BASE} with is_template true allow_connections false;"
    )));
    assert!(POSTGRES_DOCKERFILE.contains("-f /usr/share/pgbf/sql/supabase-base.sql"));
    assert!(POSTGRES_DOCKERFILE.contains(
        "COPY sql/supabase-base.sql sql/supabase-roles.sql sql/supabase-schema.sql /usr/share/pgbf/sql/"
    ));
}
