//! Which nodes explain a set of degraded paths: tomography over the nodes
//! the paths share, as Pingmesh, NetBouncer and 007 vote over paths.
//!
//! A node whose own fault degrades traffic (a lossy NIC, a saturated link,
//! a lowered MTU) degrades every path through it, both ways, while paths
//! elsewhere stay clean; a node that merely talks to it sees trouble on that
//! one path only. So every known path votes for both its ends: *tainted* (it
//! showed the trouble at all over the window, even below the threshold) or
//! clean. A node's **share** is the fraction of its known paths that are
//! tainted: about 1 for the faulty node, about 1/k for each of its k
//! neighbours' paths.
//!
//! The *flagged* paths (over the threshold: what a finding must explain)
//! are then attributed to the smallest set of nodes that explains them,
//! greedily, the highest share first. A node is blamed when
//!
//! - at least half its known paths are tainted (`MIN_SHARE`),
//! - some flagged-free path elsewhere is known (with two nodes nothing is:
//!   either end may be at fault), and
//! - on at least half its unexplained flagged paths it is more tainted than
//!   the other end: a path between two equally tainted ends is as well
//!   explained by either, or by the link between them.
//!
//! What no node explains is reported per node pair. Because shares use all
//! the evidence, not only the paths already over the threshold, the blame
//! does not wander between nodes while the window fills: a tie waits as a
//! pair (which takes rounds to be raised) until the paths elsewhere tell.
//!
//! Limits: a node is a shared element of its paths, nothing finer (a switch
//! or a zone behind several nodes shows as those nodes); two faulty nodes
//! among three cannot be told from three faulty pairs; a path probed from
//! one side only (sampled clusters) votes once.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

/// A node is blamed only when at least this share of its paths is tainted.
const MIN_SHARE: f64 = 0.5;

/// One known directed path, as the rules judged it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PathVote<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// Over the threshold: a finding must explain it.
    pub flagged: bool,
    /// Showed the trouble at all over the window (flagged paths are).
    pub tainted: bool,
}

/// Flagged paths (indices into the input) by what explains them.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Localized<'a> {
    /// Blamed nodes, in the order blamed, with their paths.
    pub nodes: Vec<(&'a str, Vec<usize>)>,
    /// Unordered pairs (sorted) nobody explains, with their paths.
    pub pairs: Vec<((&'a str, &'a str), Vec<usize>)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Votes {
    known: u32,
    tainted: u32,
    /// Known paths that are not flagged.
    unflagged: u32,
}

impl Votes {
    fn share(self) -> f64 {
        if self.known == 0 {
            0.0
        } else {
            f64::from(self.tainted) / f64::from(self.known)
        }
    }
}

pub(super) fn localize<'a>(paths: &[PathVote<'a>]) -> Localized<'a> {
    let mut votes: HashMap<&str, Votes> = HashMap::new();
    let mut flagged_by_node: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut unflagged_total: u32 = 0;
    for (i, p) in paths.iter().enumerate() {
        let tainted = p.tainted || p.flagged;
        unflagged_total += u32::from(!p.flagged);
        for node in ends(p) {
            let v = votes.entry(node).or_default();
            v.known += 1;
            v.tainted += u32::from(tainted);
            v.unflagged += u32::from(!p.flagged);
            if p.flagged {
                flagged_by_node.entry(node).or_default().push(i);
            }
        }
    }
    let share = |n: &str| votes.get(n).copied().unwrap_or_default().share();

    let mut candidates: Vec<(&str, f64, usize)> = flagged_by_node
        .iter()
        .map(|(n, f)| (*n, share(n), f.len()))
        .collect();
    candidates.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| b.2.cmp(&a.2))
            .then_with(|| a.0.cmp(b.0))
    });

    let mut explained = vec![false; paths.len()];
    let mut out = Localized::default();
    for (node, node_share, _) in candidates {
        if node_share < MIN_SHARE {
            break; // sorted: nobody after it qualifies
        }
        let v = votes.get(node).copied().unwrap_or_default();
        if unflagged_total == v.unflagged {
            continue; // nothing clean elsewhere to compare with
        }
        let open: Vec<usize> = flagged_by_node
            .get(node)
            .into_iter()
            .flatten()
            .copied()
            .filter(|i| !explained[*i])
            .collect();
        if open.is_empty() {
            continue;
        }
        let dominated = open
            .iter()
            .filter(|i| node_share > share(other_end(&paths[**i], node)))
            .count();
        if 2 * dominated < open.len() || dominated == 0 {
            continue;
        }
        for &i in &open {
            explained[i] = true;
        }
        out.nodes.push((node, open));
    }

    let mut pairs: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        if p.flagged && !explained[i] {
            let key = if p.from <= p.to {
                (p.from, p.to)
            } else {
                (p.to, p.from)
            };
            pairs.entry(key).or_default().push(i);
        }
    }
    out.pairs = pairs.into_iter().collect();
    out
}

fn ends<'a>(p: &PathVote<'a>) -> [&'a str; 2] {
    [p.from, p.to]
}

fn other_end<'a>(p: &PathVote<'a>, node: &str) -> &'a str {
    if p.from == node { p.to } else { p.from }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full mesh over `n` nodes (`n1`..), every path clean.
    fn mesh(names: &[String]) -> Vec<PathVote<'_>> {
        let mut v = Vec::new();
        for a in names {
            for b in names {
                if a != b {
                    v.push(PathVote {
                        from: a,
                        to: b,
                        flagged: false,
                        tainted: false,
                    });
                }
            }
        }
        v
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    /// Every path touching one of `bad` flagged (or only tainted).
    fn spoil(paths: &mut [PathVote], bad: &[&str], flagged: bool) {
        for p in paths.iter_mut() {
            if bad.contains(&p.from) || bad.contains(&p.to) {
                p.tainted = true;
                p.flagged |= flagged;
            }
        }
    }

    fn blamed<'a>(l: &Localized<'a>) -> Vec<&'a str> {
        let mut v: Vec<&str> = l.nodes.iter().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn one_lossy_node_is_named_once() {
        let names = names(3);
        let mut paths = mesh(&names);
        spoil(&mut paths, &["n2"], true);
        let l = localize(&paths);
        assert_eq!(blamed(&l), ["n2"]);
        assert_eq!(l.nodes[0].1.len(), 4);
        assert!(l.pairs.is_empty());
    }

    /// The window is still filling: only n1 <-> n2 is over the threshold,
    /// but n2's path to n3 already lost echoes. Equal flagged counts, and
    /// the name would pick n1: the shares pick n2.
    #[test]
    fn the_node_all_of_whose_paths_suffer_wins_a_tie_of_flags() {
        let names = names(3);
        let mut paths = mesh(&names);
        spoil(&mut paths, &["n2"], false);
        for p in paths.iter_mut() {
            if (p.from, p.to) == ("n1", "n2") || (p.from, p.to) == ("n2", "n1") {
                p.flagged = true;
            }
        }
        assert_eq!(blamed(&localize(&paths)), ["n2"]);
        // Before n2's other paths show anything: a pair, not n1.
        let mut paths = mesh(&names);
        for p in paths.iter_mut() {
            if (p.from, p.to) == ("n1", "n2") || (p.from, p.to) == ("n2", "n1") {
                p.flagged = true;
            }
        }
        let l = localize(&paths);
        assert!(l.nodes.is_empty(), "{l:?}");
        assert_eq!(l.pairs.len(), 1);
        assert_eq!(l.pairs[0].0, ("n1", "n2"));
    }

    #[test]
    fn two_lossy_nodes_are_both_named_and_nothing_else() {
        let names = names(5);
        let mut paths = mesh(&names);
        spoil(&mut paths, &["n2", "n4"], true);
        let l = localize(&paths);
        assert_eq!(blamed(&l), ["n2", "n4"]);
        assert!(l.pairs.is_empty(), "{:?}", l.pairs);
        let explained: usize = l.nodes.iter().map(|(_, p)| p.len()).sum();
        assert_eq!(explained, paths.iter().filter(|p| p.flagged).count());
    }

    #[test]
    fn a_lossy_link_between_two_nodes_is_a_pair() {
        let names = names(4);
        let mut paths = mesh(&names);
        for p in paths.iter_mut() {
            if [p.from, p.to] == ["n1", "n3"] || [p.from, p.to] == ["n3", "n1"] {
                p.flagged = true;
                p.tainted = true;
            }
        }
        let l = localize(&paths);
        assert!(l.nodes.is_empty());
        assert_eq!(l.pairs.len(), 1);
        assert_eq!(l.pairs[0].0, ("n1", "n3"));
    }

    #[test]
    fn two_nodes_cannot_be_told_apart() {
        let names = names(2);
        let mut paths = mesh(&names);
        spoil(&mut paths, &["n2"], true);
        let l = localize(&paths);
        assert!(l.nodes.is_empty());
        assert_eq!(l.pairs.len(), 1);
    }

    /// 1,000 nodes probing 40 ring neighbours each (a sampled cluster):
    /// one or two lossy nodes are named exactly, with noise on a few
    /// unrelated paths (tainted, and one flagged) left as one pair.
    #[test]
    fn a_thousand_sampled_nodes() {
        let n = 1000;
        let names = names(n);
        let mut paths = Vec::new();
        for i in 0..n {
            for d in 1..=20 {
                for j in [(i + d) % n, (i + n - d) % n] {
                    paths.push(PathVote {
                        from: &names[i],
                        to: &names[j],
                        flagged: false,
                        tainted: false,
                    });
                }
            }
        }
        spoil(&mut paths, &["n500", "n17"], true);
        for p in paths.iter_mut().step_by(997).take(10) {
            p.tainted = true;
        }
        let noisy = paths
            .iter()
            .position(|p| p.from == "n300" && p.to == "n301")
            .expect("a ring path");
        paths[noisy].flagged = true;
        let l = localize(&paths);
        assert_eq!(blamed(&l), ["n17", "n500"]);
        assert_eq!(l.pairs.len(), 1, "{:?}", l.pairs);
        assert_eq!(l.pairs[0].0, ("n300", "n301"));
        for (_, p) in &l.nodes {
            assert_eq!(p.len(), 80, "each lossy node's 40 probes and 40 probers");
        }
    }
}
