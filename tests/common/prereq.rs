//! A test whose prerequisite (root, a tool, a kernel feature) is missing
//! fails under CI (`CI=true`, which `.ci/run` sets), where everything it
//! needs is installed; elsewhere it says why it did not run, and
//! `scripts/test.sh` counts those lines as not run.

/// Reports a missing prerequisite: panics under `CI=true`, else prints
/// `ignored: TEST: WHY` (the caller then returns).
#[macro_export]
macro_rules! prereq_missing {
    ($($arg:tt)*) => {{
        let why = format!($($arg)*);
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("a prerequisite is missing under CI=true: {why}");
        }
        // Past libtest's capture (which takes only the print macros), so
        // the run's log shows it for a test that "passed".
        use std::io::Write as _;
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let _ = writeln!(std::io::stderr(), "ignored: {test}: {why}");
    }};
}
