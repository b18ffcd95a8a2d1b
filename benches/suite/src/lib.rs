//! What every test of the suite benchmark does, whichever way it gets its
//! database: insert 3 rows into `accounts` and read them back, in one
//! transaction, with unnamed statements (`persistent(false)`), which are
//! safe behind a transaction pooler without prepared-statement tracking.

use sqlx::{Connection, PgConnection, Row};

/// The migrations every way starts from.
pub const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");

/// Test `i`'s body: insert 3 rows, read them back, check them.
pub async fn three_rows(conn: &mut PgConnection, i: u32) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for k in 0..3 {
        sqlx::query("insert into accounts (email, name) values ($1, $2)")
            .bind(format!("t{i}_{k}@example.com"))
            .bind(format!("Test {i} row {k}"))
            .persistent(false)
            .execute(&mut *tx)
            .await?;
    }
    let rows = sqlx::query("select email, name from accounts where email like $1 order by email")
        .bind(format!("t{i}\\_%"))
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(rows.len(), 3, "test {i} reads its 3 rows back");
    let first: String = rows[0].get("email");
    assert_eq!(first, format!("t{i}_0@example.com"));
    Ok(())
}
