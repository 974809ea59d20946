//! `--server-pid`: the CPU time local server processes spend, from `/proc/PID/stat`.

use std::process::Command;

/// Clock ticks of `utime + stime` in the text of a `/proc/PID/stat` file.
pub(super) fn stat_ticks(stat: &str) -> Result<u64, String> {
    // The command name is in parentheses and may hold spaces or parentheses: fields start after the
    // last ')'. After it come state (field 3) ... utime (14) and stime (15).
    let rest = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| "no ')' after the command name".to_owned())?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize, name: &str| -> Result<u64, String> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("no {name} field"))
    };
    Ok(field(11, "utime")? + field(12, "stime")?)
}

/// The processes whose CPU time a run reports.
#[derive(Debug, Clone)]
pub(super) struct CpuProbe {
    /// Process ids.
    pids: Vec<u32>,
    /// Clock ticks per second (`getconf CLK_TCK`).
    ticks_per_second: f64,
}

impl CpuProbe {
    /// A probe of `pids`; checks that each one can be read now.
    pub(super) fn new(pids: &[u32]) -> Result<CpuProbe, String> {
        let output = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .map_err(|e| format!("--server-pid needs getconf CLK_TCK: {e}"))?;
        let ticks: f64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|t: &f64| *t > 0.0)
            .ok_or_else(|| "getconf CLK_TCK printed no positive number".to_owned())?;
        let probe = CpuProbe {
            pids: pids.to_vec(),
            ticks_per_second: ticks,
        };
        probe.seconds()?;
        Ok(probe)
    }

    /// CPU-seconds the processes have used so far, together.
    pub(super) fn seconds(&self) -> Result<f64, String> {
        let mut ticks = 0u64;
        for pid in &self.pids {
            let path = format!("/proc/{pid}/stat");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("--server-pid {pid}: reading {path}: {e}"))?;
            ticks += stat_ticks(&text).map_err(|e| format!("--server-pid {pid}: {path}: {e}"))?;
        }
        Ok(ticks as f64 / self.ticks_per_second)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_utime_plus_stime() {
        let line =
            "4242 (kv node) S 1 4242 4242 0 -1 4194560 1000 0 0 0 731 269 0 0 20 0 9 0 123 456 789";
        assert_eq!(stat_ticks(line).unwrap(), 1000);
        // A name with ") " inside is cut at the last parenthesis.
        let tricky = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(stat_ticks(tricky).unwrap(), 11);
        assert!(stat_ticks("7 (x) R 1").is_err());
        assert!(stat_ticks("no parenthesis").is_err());
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = CpuProbe::new(&[std::process::id()]).unwrap();
        let before = probe.seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        assert!(probe.seconds().unwrap() >= before);
        assert!(CpuProbe::new(&[u32::MAX]).is_err());
    }
}
