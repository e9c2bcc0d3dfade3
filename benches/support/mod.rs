//! Shared by the criterion benches (`mod support;`).

use std::time::Duration;

/// CPU time of this thread: on a shared machine wall time also counts time spent
/// descheduled, CPU time is what one core spends working.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
