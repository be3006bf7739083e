//! Raise after N rounds, clear after M rounds, hold what keeps coming back.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use netmatrix_api::{Finding, FindingKind, PendingFinding};

use super::{Condition, Subject};

/// Per-finding round counters.
///
/// - A condition seen for the first time starts *pending*; it is *raised*
///   once it held for `raise_after` consecutive rounds.
/// - A pending condition that misses one round is forgotten: intermittent
///   blips never accumulate into a finding.
/// - A raised finding is cleared after `clear_after` consecutive rounds
///   without its condition; a round with the condition resets that count.
/// - A cleared finding is remembered for the flap window. Raised again
///   within it (after `raise_after` rounds, as any finding), it is
///   *flapping*: the same finding (its first `since`), held raised through
///   the gaps and cleared only once its condition stayed away for the whole
///   window, as Prometheus' `keep_firing_for` or BGP's route-flap damping
///   do. A fault that comes and goes is then one steady finding that
///   alerts can fire on, not a raise and a clear every cycle (which resets
///   every alert's `for:`). A finding that heals for good still clears
///   after `clear_after` rounds.
/// - `since` is the round the condition first held, not when it was raised,
///   so the operator sees how long the failure has lasted.
#[derive(Debug)]
pub struct Hysteresis {
    raise_after: RaiseAfter,
    clear_after: u32,
    flap_window: u32,
    tracks: BTreeMap<(FindingKind, Subject), Track>,
}

/// Default flap window, in rounds (a minute at the default 5 s interval).
pub const FLAP_WINDOW_ROUNDS: u32 = 12;

/// Rounds a condition must hold before it is raised.
#[derive(Debug, Clone, Copy)]
struct RaiseAfter {
    general: u32,
    /// For outages ([`is_outage`]): complete loss seen by several nodes.
    outage: u32,
}

impl RaiseAfter {
    fn of(self, kind: FindingKind) -> u32 {
        if is_outage(kind) {
            self.outage
        } else {
            self.general
        }
    }
}

#[derive(Debug)]
struct Track {
    since_unix_ms: u64,
    held_rounds: u32,
    missed_rounds: u32,
    raised: bool,
    flapping: bool,
    /// Rounds since the finding last cleared, while it is remembered.
    cleared_rounds_ago: Option<u32>,
    /// Times it was raised while remembered (the first raise included).
    raises: u32,
    /// The latest evidence; kept while a raised finding waits to clear.
    condition: Condition,
}

impl Hysteresis {
    pub fn new(raise_after: u32, clear_after: u32) -> Self {
        Hysteresis {
            raise_after: RaiseAfter {
                general: raise_after.max(1),
                outage: raise_after.max(1),
            },
            clear_after: clear_after.max(1),
            flap_window: FLAP_WINDOW_ROUNDS.max(clear_after),
            tracks: BTreeMap::new(),
        }
    }

    /// Raises outages ([`is_outage`]) after `rounds` instead (at most the
    /// general count).
    pub fn with_outage_rounds(mut self, rounds: u32) -> Self {
        self.raise_after.outage = rounds.clamp(1, self.raise_after.general);
        self
    }

    /// Sets the flap window in rounds (at least the clear count: a window
    /// shorter than that would hold nothing).
    pub fn with_flap_window(mut self, rounds: u32) -> Self {
        self.flap_window = rounds.max(self.clear_after);
        self
    }

    /// Feeds one round's conditions and returns the raised findings, ordered
    /// by kind and subject.
    pub fn observe(&mut self, conditions: Vec<Condition>, now_unix_ms: u64) -> Vec<Finding> {
        let mut present: BTreeMap<(FindingKind, Subject), Condition> = conditions
            .into_iter()
            .map(|c| ((c.kind, c.subject.clone()), c))
            .collect();

        let clear_after = self.clear_after;
        let window = self.flap_window;
        let raise_after = self.raise_after;
        self.tracks.retain(|key, track| match present.remove(key) {
            Some(condition) => {
                track.held_rounds = track.held_rounds.saturating_add(1);
                track.missed_rounds = 0;
                track.condition = condition;
                if !track.raised && track.held_rounds >= raise_after.of(key.0) {
                    track.raised = true;
                    track.raises = track.raises.saturating_add(1);
                    // Back within the window after it cleared: flapping.
                    track.flapping |= track.cleared_rounds_ago.take().is_some();
                }
                true
            }
            None if track.raised => {
                track.held_rounds = 0;
                track.missed_rounds = track.missed_rounds.saturating_add(1);
                let clear = if track.flapping { window } else { clear_after };
                if track.missed_rounds >= clear {
                    track.raised = false;
                    track.flapping = false;
                    track.cleared_rounds_ago = Some(0);
                }
                true
            }
            None => {
                // Pending: forgotten at the first miss, unless remembered
                // from an earlier raise for the flap window.
                track.held_rounds = 0;
                match &mut track.cleared_rounds_ago {
                    Some(rounds) => {
                        *rounds = rounds.saturating_add(1);
                        *rounds < window
                    }
                    None => false,
                }
            }
        });
        for (key, condition) in present {
            let raised = raise_after.of(key.0) <= 1;
            self.tracks.insert(
                key,
                Track {
                    since_unix_ms: now_unix_ms,
                    held_rounds: 1,
                    missed_rounds: 0,
                    raised,
                    flapping: false,
                    cleared_rounds_ago: None,
                    raises: u32::from(raised),
                    condition,
                },
            );
        }

        self.tracks
            .values()
            .filter(|t| t.raised)
            .map(|t| finding(t, window))
            .collect()
    }
}

impl Hysteresis {
    /// Conditions that held in the last round and are not raised yet.
    pub fn pending(&self) -> Vec<PendingFinding> {
        self.tracks
            .iter()
            .filter(|(_, t)| !t.raised && t.held_rounds > 0)
            .map(|((kind, _), t)| PendingFinding {
                kind: *kind,
                nodes: t.condition.nodes.clone(),
                held_rounds: t.held_rounds,
                raise_after: self.raise_after.of(*kind),
            })
            .collect()
    }
}

/// Paths down both ways for whole nodes or groups, seen from several nodes
/// at once: many independent echoes all lost in the same round are not a
/// blip, so these may be raised sooner than findings built on one path or
/// one check.
pub fn is_outage(kind: FindingKind) -> bool {
    matches!(
        kind,
        FindingKind::NodeIsolated
            | FindingKind::Partition
            | FindingKind::CrossNodeBroken
            | FindingKind::UnderlayBroken
    )
}

fn finding(track: &Track, window: u32) -> Finding {
    let c = &track.condition;
    let since_unix_ms = track.since_unix_ms;
    let since = UNIX_EPOCH + Duration::from_millis(since_unix_ms);
    let mut evidence = c.evidence.clone();
    if track.flapping {
        evidence.insert(
            0,
            format!(
                "flapping: raised {} times, clearing and coming back; held until it stays away for {window} rounds",
                track.raises
            ),
        );
    }
    Finding {
        kind: c.kind,
        nodes: c.nodes.clone(),
        groups: c.groups.clone(),
        paths: c.paths.clone(),
        summary: c.summary.clone(),
        evidence,
        hint: c.hint.clone(),
        since: humantime::format_rfc3339_millis(since).to_string(),
        since_unix_ms,
        flapping: track.flapping,
        cause: c.cause.clone(),
        facts_missing: c.facts_missing.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_may_be_raised_sooner() {
        let isolated = |node: &str| condition_of(FindingKind::NodeIsolated, node);
        let mut h = Hysteresis::new(3, 3).with_outage_rounds(2);
        assert!(
            h.observe(vec![isolated("n1"), condition("n1")], 1)
                .is_empty()
        );
        let raised = h.observe(vec![isolated("n1"), condition("n1")], 2);
        assert_eq!(raised.len(), 1, "the outage after 2 rounds, DNS not yet");
        assert_eq!(raised[0].kind, FindingKind::NodeIsolated);
        assert_eq!(h.observe(vec![isolated("n1"), condition("n1")], 3).len(), 2);
        // Never more than the general count, never less than one.
        assert_eq!(
            Hysteresis::new(2, 2)
                .with_outage_rounds(5)
                .raise_after
                .outage,
            2
        );
        assert_eq!(
            Hysteresis::new(3, 2)
                .with_outage_rounds(0)
                .raise_after
                .outage,
            1
        );
    }

    fn condition(node: &str) -> Condition {
        condition_of(FindingKind::DnsFailure, node)
    }

    fn condition_of(kind: FindingKind, node: &str) -> Condition {
        Condition::new(
            kind,
            Subject::Node(node.into()),
            vec![node.into()],
            "s".into(),
            vec![],
            "h".into(),
        )
    }

    /// Runs rounds; `true` means the condition holds in that round.
    fn run(h: &mut Hysteresis, rounds: &[bool]) -> Vec<usize> {
        rounds
            .iter()
            .enumerate()
            .map(|(i, &holds)| {
                let conds = if holds { vec![condition("n1")] } else { vec![] };
                h.observe(conds, 1000 * i as u64).len()
            })
            .collect()
    }

    #[test]
    fn raises_after_n_rounds_and_keeps_since() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(run(&mut h, &[true, true, true, true]), [0, 0, 1, 1]);
        let f = h.observe(vec![condition("n1")], 9000);
        assert_eq!(f[0].since_unix_ms, 0);
        assert_eq!(f[0].since, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn blips_never_raise() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(
            run(&mut h, &[true, false, true, true, false, true, false]),
            [0; 7]
        );
    }

    #[test]
    fn clears_after_m_good_rounds_and_a_relapse_resets_the_count() {
        let mut h = Hysteresis::new(2, 3);
        let rounds = [true, true, false, false, true, false, false, false, false];
        assert_eq!(run(&mut h, &rounds), [0, 1, 1, 1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn raise_after_one_is_immediate() {
        let mut h = Hysteresis::new(1, 1);
        assert_eq!(run(&mut h, &[true, false, true]), [1, 0, 1]);
    }

    #[test]
    fn a_finding_that_comes_back_is_held_as_flapping() {
        let mut h = Hysteresis::new(2, 2).with_flap_window(6);
        // Raised, cleared after 2 misses, back within the window: raised
        // after 2 rounds again, then held through gaps shorter than 6.
        let cycle = [true, true, false, false, true, true, false, false, false];
        assert_eq!(run(&mut h, &cycle), [0, 1, 1, 0, 0, 1, 1, 1, 1]);
        let f = h.observe(vec![condition("n1")], 9000);
        assert!(f[0].flapping);
        assert_eq!(f[0].since_unix_ms, 0, "the same finding as the first raise");
        assert!(f[0].evidence[0].starts_with("flapping: raised 2 times"));
        // It clears only after the whole window without it.
        let rounds = [false; 6];
        assert_eq!(run(&mut h, &rounds), [1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn a_finding_that_heals_for_good_clears_in_its_normal_time_and_is_then_forgotten() {
        let mut h = Hysteresis::new(2, 2).with_flap_window(4);
        assert_eq!(run(&mut h, &[true, true, false, false]), [0, 1, 1, 0]);
        assert!(!h.tracks.is_empty(), "remembered for the window");
        assert_eq!(run(&mut h, &[false; 4]), [0; 4]);
        assert!(h.tracks.is_empty(), "forgotten after it");
        // Back later than the window: a new finding, not flapping.
        let raised = run(&mut h, &[true, true]);
        assert_eq!(raised, [0, 1]);
        assert!(!h.observe(vec![condition("n1")], 99_000)[0].flapping);
        // Blips after a clear do not make it flap.
        let mut h = Hysteresis::new(2, 2).with_flap_window(6);
        let blips = [true, true, false, false, true, false, true, false];
        assert_eq!(run(&mut h, &blips), [0, 1, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn subjects_are_tracked_independently() {
        let mut h = Hysteresis::new(2, 2);
        h.observe(vec![condition("n1")], 0);
        let f = h.observe(vec![condition("n1"), condition("n2")], 1);
        assert_eq!(f.len(), 1);
        let f = h.observe(vec![condition("n2")], 2);
        assert_eq!(f.len(), 2, "n1 waits to clear, n2 is raised");
    }
}
