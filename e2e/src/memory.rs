//! A process's peak resident memory, as Linux reports it (`VmHWM` in `/proc/<pid>/status`): what
//! the benchmarks print next to their throughput.

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
}
