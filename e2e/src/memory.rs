//! A process's peak resident memory, as Linux reports it (`VmHWM` in `/proc/<pid>/status`), and
//! the CPU time it has used (`/proc/<pid>/stat`): what the benchmarks print next to their
//! throughput.

/// The `VmHWM` line of a `/proc/<pid>/status` text, in KiB.
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Peak resident memory of process `pid` so far, in KiB; `None` when it is gone or the kernel
/// does not say.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    vm_hwm_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// [`peak_rss_kib`] in MiB, NaN when unknown (printed as such, never as a made-up 0).
pub fn peak_rss_mib(pid: u32) -> f64 {
    peak_rss_kib(pid).map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}

/// User + system CPU seconds of a `/proc/<pid>/stat` text (fields 14 and 15, counted after the
/// `)` that ends the command name, which may itself hold spaces and parentheses). The kernel
/// reports them in USER_HZ ticks, which is 100 on every architecture Linux exports to user space.
pub fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name, so utime (14) and stime (15) are the 12th
    // and 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds (user + system) process `pid` has used so far, its threads included; `None`
/// when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_from_a_status_text_and_this_process() {
        let status = "Name:\tindexer\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(51_234));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
        assert!(peak_rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert!(peak_rss_mib(u32::MAX).is_nan());
    }

    #[test]
    fn reads_cpu_time_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 9";
        assert_eq!(stat_cpu_seconds(stat), Some(12.9));
        assert_eq!(stat_cpu_seconds("4242 (x) S 1"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
