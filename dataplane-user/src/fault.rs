//! Crash points for recovery tests.
//!
//! A daemon started with `DATAPLANE_CRASH_AT=<point>` aborts when it reaches
//! that point, so tests can check that a daemon dying in the middle of an
//! operation leaves nothing behind once it is restarted. Unset (always, in
//! normal use), a point costs one environment lookup.

/// Aborts the process if `DATAPLANE_CRASH_AT` names `point`.
pub fn point(point: &str) {
    if std::env::var("DATAPLANE_CRASH_AT").is_ok_and(|v| v == point) {
        tracing::error!(point, "DATAPLANE_CRASH_AT reached: aborting");
        std::process::abort();
    }
}
