//! When an agent's silence means something. Not until every agent has had
//! a full freshness window to report to this aggregator: after it starts,
//! and again after it was itself stalled (frozen, starved of CPU, paused by
//! the runtime), when every report looks old because the aggregator did
//! not listen, not because the agents did not speak.

/// Tracks the aggregator's own rounds to tell its stalls.
#[derive(Debug, Default)]
pub struct SilenceGate {
    last_round_ms: Option<u64>,
    listening_since_ms: u64,
}

impl SilenceGate {
    /// Called once per evaluation round. `window_ms`: how long a report
    /// stays fresh; `stall_ms`: a gap between two rounds longer than this
    /// is a stall of the aggregator. Returns whether silence is judged in
    /// this round.
    pub fn observe(&mut self, now_ms: u64, window_ms: u64, stall_ms: u64) -> bool {
        match self.last_round_ms {
            None => self.listening_since_ms = now_ms,
            Some(last) if now_ms.saturating_sub(last) > stall_ms => {
                tracing::warn!(
                    stalled_ms = now_ms.saturating_sub(last),
                    "the aggregator was stalled: agents' silence is not judged until they had time to report again"
                );
                self.listening_since_ms = now_ms;
            }
            Some(_) => {}
        }
        self.last_round_ms = Some(now_ms);
        now_ms.saturating_sub(self.listening_since_ms) >= window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_judged_a_window_after_start_and_after_a_stall() {
        let mut gate = SilenceGate::default();
        let (window, stall) = (15_000, 10_000);
        // Started at t=100 s: judged from 115 s on.
        assert!(!gate.observe(100_000, window, stall));
        assert!(!gate.observe(110_000, window, stall));
        assert!(gate.observe(115_000, window, stall));
        assert!(gate.observe(120_000, window, stall));
        // Frozen for 30 s: not judged again until 15 s after resuming.
        assert!(!gate.observe(150_000, window, stall));
        assert!(!gate.observe(160_000, window, stall));
        assert!(gate.observe(165_000, window, stall));
        // A slow round is not a stall.
        assert!(gate.observe(174_000, window, stall));
    }
}
