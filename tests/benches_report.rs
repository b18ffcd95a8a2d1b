//! The benches' writer of docs/benchmarks.md (benches/report/), whose unit
//! tests run here: benches are `harness = false` and have none of their own.

#[allow(dead_code)]
#[path = "../benches/report/mod.rs"]
mod report;

#[test]
fn a_result_replaces_only_its_own_benchs_part() {
    let page = "# B\n<!-- bench:a:result -->\nold a\n<!-- bench:a:end -->\nkeep\n\
                <!-- bench:b:result -->\nold b\n<!-- bench:b:end -->\n";
    let new = report::replace_result(page, "a", "new a\n").unwrap();
    assert_eq!(
        new,
        "# B\n<!-- bench:a:result -->\nnew a\n<!-- bench:a:end -->\nkeep\n\
         <!-- bench:b:result -->\nold b\n<!-- bench:b:end -->\n"
    );
    assert!(report::replace_result(page, "c", "x")
        .unwrap_err()
        .contains("bench:c:result"));
}

#[test]
fn every_bench_has_its_markers_on_the_page() {
    let page = include_str!("../docs/benchmarks.md");
    for bench in ["suite", "scale", "acquire_parallel", "acquire"] {
        report::replace_result(page, bench, "x\n").unwrap();
    }
}

#[test]
fn the_dated_result_names_the_commit_and_the_machine() {
    let mut report = report::Report::default();
    report.line("| a | b |");
    let dated = report.dated();
    assert!(dated.starts_with("Result of "), "{dated}");
    assert!(
        dated.contains(" cores, ") && dated.contains(" GiB"),
        "{dated}"
    );
    assert!(dated.contains("```text\n| a | b |\n```\n"), "{dated}");
}
