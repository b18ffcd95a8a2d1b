//! The watchdog's decisions (`docker/sql/watchdog.sql`, `pgbf_tick`),
//! loaded into a PostgreSQL of the test's own (its database on the stack)
//! and driven with a clock the test gives: the start-up grace, reaping
//! after the bound, a lease keeping the stack, the janitor's settle time,
//! batches and budget, and the marks, as `docker/postgres-entrypoint.sh`
//! behaved when it made them in bash.

mod common;
use common::contract_sql;

use common::audited;
use pgbouncer_fixtures::sqlx;
use pgbouncer_fixtures::{test_db, TestDb};
use rstest::rstest;
use sqlx::{PgConnection, Row};

const STARTED: i64 = 1_000;
/// pgbf.max_warm_clones (4) + 256: a full budget.
const FULL_BUDGET: i32 = 260;

/// The SQL loaded into the test's database, with the entrypoint's settings
/// for this session (reap after 10 s, grace 30 s, settle 2 s, 4 clones).
async fn watchdog(test_db: &TestDb) -> PgConnection {
    let mut conn = contract_sql::loaded(test_db, 5).await;
    set(&mut conn, "reap_after_secs", 10).await;
    set(&mut conn, "lease_grace_secs", 30).await;
    set(&mut conn, "janitor_settle_secs", 2).await;
    set(&mut conn, "max_warm_clones", 4).await;
    conn
}

async fn set(conn: &mut PgConnection, name: &str, value: i64) {
    let sql = format!("set pgbf.{name} = {value}");
    sqlx::raw_sql(audited(&sql)).execute(conn).await.unwrap();
}

/// The state a tick carries to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
struct State {
    last_lease: i64,
    seen: bool,
    dirty: bool,
    budget: i32,
}

/// The state of a watchdog that has just started.
const START: State = State {
    last_lease: STARTED,
    seen: false,
    dirty: false,
    budget: 0,
};

/// What the entrypoint observed for a tick.
#[derive(Clone, Copy, Default)]
struct Seen {
    leases: i32,
    leased: bool,
    fresh: bool,
    batch: Option<i32>,
    /// When the lease mark was last written.
    mark_at: Option<i64>,
}

const NOTHING: Seen = Seen {
    leases: 0,
    leased: false,
    fresh: false,
    batch: None,
    mark_at: None,
};

#[derive(Debug)]
struct Answer {
    action: String,
    state: State,
    mark: bool,
    reap_at: i64,
}

async fn tick(conn: &mut PgConnection, at: i64, state: State, seen: Seen) -> Answer {
    let row = sqlx::query("select * from pgbf_tick($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(at)
        .bind(STARTED)
        .bind(state.last_lease)
        .bind(state.seen)
        .bind(state.dirty)
        .bind(state.budget)
        .bind(seen.leases)
        .bind(seen.leased)
        .bind(seen.fresh)
        .bind(seen.batch)
        .bind(seen.mark_at)
        .fetch_one(conn)
        .await
        .unwrap();
    Answer {
        action: row.get("action"),
        state: State {
            last_lease: row.get("last_lease"),
            seen: row.get("seen"),
            dirty: row.get("dirty"),
            budget: row.get("budget"),
        },
        mark: row.get("mark"),
        reap_at: row.get("reap_at"),
    }
}

/// Ticks once a second from `from` to `to` (inclusive) observing nothing;
/// returns the first tick's time that is not `wait`, with its answer.
async fn idle_until(conn: &mut PgConnection, from: i64, to: i64, state: State) -> (i64, Answer) {
    let mut state = state;
    for at in from..=to {
        let answer = tick(conn, at, state, NOTHING).await;
        if answer.action != "wait" {
            return (at, answer);
        }
        state = answer.state;
    }
    panic!("only waits from {from} to {to}");
}

#[rstest]
#[tokio::test]
async fn without_a_lease_the_stack_is_reaped_after_its_grace(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    let first = tick(&mut conn, STARTED, START, NOTHING).await;
    assert_eq!(first.action, "wait");
    assert_eq!(first.state, START);
    assert_eq!(first.reap_at, STARTED + 30, "the grace, not the reap bound");
    let (at, reap) = idle_until(&mut conn, STARTED, STARTED + 60, START).await;
    assert_eq!((at, reap.action.as_str()), (STARTED + 30, "reap"));

    // A reap bound longer than the grace: the bound.
    set(&mut conn, "reap_after_secs", 40).await;
    let (at, reap) = idle_until(&mut conn, STARTED, STARTED + 60, START).await;
    assert_eq!((at, reap.action.as_str()), (STARTED + 40, "reap"));
    assert_eq!(reap.reap_at, STARTED + 40);
}

#[rstest]
#[tokio::test]
async fn a_lease_keeps_the_stack_and_its_end_starts_the_reap_bound(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    let held = Seen {
        leases: 1,
        leased: true,
        ..NOTHING
    };
    let mut state = START;
    // Held far past every bound: kept.
    for at in [STARTED + 1, STARTED + 15, STARTED + 500] {
        let answer = tick(&mut conn, at, state, held).await;
        assert_eq!(answer.action, "wait", "at {at}");
        assert_eq!(
            answer.state,
            State {
                last_lease: at,
                seen: true,
                dirty: true,
                budget: FULL_BUDGET
            }
        );
        assert_eq!(answer.reap_at, at + 10);
        state = answer.state;
    }
    // Gone at 1500: the janitor after the settle time (2 s), the reap after
    // 10 s, the grace no longer counts (a lease was seen).
    let after = Seen {
        leased: true,
        ..NOTHING
    };
    let gone = tick(&mut conn, STARTED + 501, state, after).await;
    assert_eq!(gone.action, "wait", "settling");
    let settled = tick(&mut conn, STARTED + 502, gone.state, after).await;
    assert_eq!(settled.action, "janitor");
    assert_eq!(settled.reap_at, STARTED + 510);
    let last = tick(&mut conn, STARTED + 509, settled.state, after).await;
    assert_eq!(last.action, "janitor", "still dirty: no batch ran");
    let reaped = tick(&mut conn, STARTED + 510, settled.state, after).await;
    assert_eq!(reaped.action, "reap", "the reap comes before a batch");
}

#[rstest]
#[tokio::test]
async fn a_lease_too_short_to_count_leaves_its_mark(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    let marked = Seen {
        leased: true,
        fresh: true,
        ..NOTHING
    };
    let early = tick(&mut conn, STARTED + 1, START, marked).await;
    assert_eq!(early.action, "wait", "within the settle time of the start");
    let state = State {
        seen: true,
        dirty: true,
        budget: FULL_BUDGET,
        ..START
    };
    assert_eq!(early.state, state);
    assert_eq!(early.reap_at, STARTED + 10, "the grace is over");
    let answer = tick(&mut conn, STARTED + 2, early.state, marked).await;
    assert_eq!(answer.action, "janitor");
    // A mark older than the janitor's own: no new work.
    let done = State {
        dirty: false,
        ..state
    };
    let old = Seen {
        leased: true,
        ..NOTHING
    };
    let answer = tick(&mut conn, STARTED + 3, done, old).await;
    assert_eq!((answer.action.as_str(), answer.state), ("wait", done));
}

#[rstest]
#[tokio::test]
async fn leases_too_short_to_count_keep_the_stack_from_their_marks_time(
    #[future(awt)] test_db: TestDb,
) {
    let mut conn = watchdog(&test_db).await;
    // One lease counted at +1, then only processes that lived between two
    // ticks (a warm pool's test binaries), each leaving its mark.
    let counted = Seen {
        leases: 1,
        leased: true,
        ..NOTHING
    };
    let mut state = tick(&mut conn, STARTED + 1, START, counted).await.state;
    for mark in [STARTED + 8, STARTED + 16, STARTED + 24] {
        let marked = Seen {
            leased: true,
            fresh: true,
            mark_at: Some(mark),
            ..NOTHING
        };
        let answer = tick(&mut conn, mark + 1, state, marked).await;
        assert_ne!(answer.action, "reap", "a mark at {mark} keeps the stack");
        assert_eq!(answer.state.last_lease, mark);
        assert_eq!(answer.reap_at, mark + 10);
        state = answer.state;
    }
    // An older mark does not move the last lease back; a mark ahead of the
    // tick's clock counts as now.
    let old = Seen {
        leased: true,
        mark_at: Some(STARTED + 20),
        ..NOTHING
    };
    let answer = tick(&mut conn, STARTED + 26, state, old).await;
    assert_eq!(answer.state.last_lease, STARTED + 24);
    let ahead = Seen {
        leased: true,
        mark_at: Some(STARTED + 40),
        ..NOTHING
    };
    let answer = tick(&mut conn, STARTED + 27, state, ahead).await;
    assert_eq!(answer.state.last_lease, STARTED + 27);
    // Then idle (the janitor done): reaped 10 s after the last mark.
    let done = State {
        dirty: false,
        ..state
    };
    let (at, reap) = idle_until(&mut conn, STARTED + 25, STARTED + 60, done).await;
    assert_eq!((at, reap.action.as_str()), (STARTED + 34, "reap"));
}

#[rstest]
#[tokio::test]
async fn the_janitor_runs_batches_until_done_then_marks(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    let at = STARTED + 93;
    let dirty = State {
        last_lease: STARTED + 90,
        seen: true,
        dirty: true,
        budget: FULL_BUDGET,
    };
    let batch = |left| Seen {
        batch: Some(left),
        ..NOTHING
    };
    // More to do now: the next batch at once.
    let more = tick(&mut conn, at, dirty, batch(1)).await;
    assert_eq!(more.action, "janitor");
    assert_eq!(more.state.budget, FULL_BUDGET - 1);
    assert!(!more.mark);
    // More once idle, or no answer: wait a tick, still dirty.
    for left in [2, -1] {
        let later = tick(&mut conn, at, more.state, batch(left)).await;
        assert_eq!(later.action, "wait", "after a batch answering {left}");
        assert!(later.state.dirty && !later.mark);
        assert_eq!(later.state.budget, FULL_BUDGET - 2);
        let next = tick(&mut conn, at + 1, later.state, NOTHING).await;
        assert_eq!(next.action, "janitor");
    }
    // Nothing left: the mark, clean, nothing more.
    let done = tick(&mut conn, at, more.state, batch(0)).await;
    assert_eq!(done.action, "wait");
    assert!(done.mark && !done.state.dirty);
    let (when, reap) = idle_until(&mut conn, at + 1, at + 60, done.state).await;
    assert_eq!(
        (when, reap.action.as_str()),
        (STARTED + 100, "reap"),
        "no batch once done, the reap 10 s after the lease"
    );
}

#[rstest]
#[tokio::test]
async fn the_budget_bounds_the_batches_of_an_idle_period(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    let last = State {
        last_lease: STARTED,
        seen: true,
        dirty: true,
        budget: 1,
    };
    let more = Seen {
        batch: Some(1),
        ..NOTHING
    };
    let spent = tick(&mut conn, STARTED + 3, last, more).await;
    assert_eq!(spent.action, "wait");
    assert!(spent.mark && !spent.state.dirty);
    assert_eq!(spent.state.budget, 0);
    // A lease refills it; its batch's answer is still taken.
    let lease = Seen {
        leases: 1,
        batch: Some(0),
        ..NOTHING
    };
    let refilled = tick(&mut conn, STARTED + 4, last, lease).await;
    assert_eq!(refilled.action, "wait");
    assert!(refilled.mark, "the batch had nothing left");
    assert!(refilled.state.dirty, "but the lease may bring work");
    assert_eq!(refilled.state.budget, FULL_BUDGET);
}

#[rstest]
#[tokio::test]
async fn the_janitor_waits_for_the_settle_time(#[future(awt)] test_db: TestDb) {
    let mut conn = watchdog(&test_db).await;
    set(&mut conn, "janitor_settle_secs", 5).await;
    set(&mut conn, "reap_after_secs", 60).await;
    let dirty = State {
        last_lease: STARTED + 40,
        seen: true,
        dirty: true,
        budget: FULL_BUDGET,
    };
    let (at, answer) = idle_until(&mut conn, STARTED + 41, STARTED + 99, dirty).await;
    assert_eq!((at, answer.action.as_str()), (STARTED + 45, "janitor"));
}
