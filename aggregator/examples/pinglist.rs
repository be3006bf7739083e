//! Pinglist recomputation at scale: the time to read the watches' objects
//! into a view, to build every list once (a start), and to recompute after
//! one event (a heartbeat, a join, a cordon: the entries of the node the
//! events name only, as the aggregator does), with how many lists changed
//! and their bytes; then a relist (the whole view again). Numbers to read,
//! not thresholds:
//!
//! ```text
//! cargo run --release -p netmatrix-aggregator --example pinglist -- 100000
//! ```
//!
//! Argument: nodes (default 100000), each with a pod agent, a companion and
//! a host agent; sampled with the default 40 stable and 2 rotating nodes.

use std::collections::HashSet;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use netmatrix_aggregator::pinglist::build::PinglistConfig;
use netmatrix_aggregator::pinglist::{Change, ClusterView, Lists};
use netmatrix_runtime::k8s::targets::fixtures::{node, pod};

const NOW: u64 = 1_894_665_600_000;

fn objects(i: usize) -> (Node, [Pod; 3]) {
    let name = format!("node-{i:06}");
    let [_, b, c, d] = u32::try_from(i).expect("fewer nodes").to_be_bytes();
    let pod_ip = |last: u8| format!("10.{b}.{c}.{}", d.wrapping_add(last));
    (
        node(&name, false, Some("True")),
        [
            pod(&format!("agent-{i}"), &name, &pod_ip(0), "Running", "agent"),
            pod(
                &format!("companion-{i}"),
                &name,
                &format!("11.{b}.{c}.{d}"),
                "Running",
                "companion",
            ),
            pod(
                &format!("host-agent-{i}"),
                &name,
                &format!("172.{b}.{c}.{d}"),
                "Running",
                "host-agent",
            ),
        ],
    )
}

struct Cluster {
    nodes: Vec<Node>,
    reporters: Vec<Pod>,
    targets: Vec<Pod>,
}

impl Cluster {
    fn new(n: usize) -> Self {
        let mut c = Cluster {
            nodes: Vec::new(),
            reporters: Vec::new(),
            targets: Vec::new(),
        };
        (0..n).for_each(|i| c.add(i));
        c
    }

    fn add(&mut self, i: usize) {
        let (node, [agent, companion, host]) = objects(i);
        self.nodes.push(node);
        self.targets.extend([agent.clone(), companion]);
        self.reporters.extend([agent, host]);
    }

    fn view(&self) -> (ClusterView, f64) {
        let start = Instant::now();
        let view = ClusterView::from_stores(&self.nodes, &self.reporters, &self.targets);
        (view, ms(start))
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn summary(changes: &[Change]) -> (usize, usize) {
    let bytes = changes
        .iter()
        .map(|c| match c {
            Change::Publish(_, p) => p.body.len(),
            Change::Remove(_) => 0,
        })
        .sum();
    (changes.len(), bytes)
}

/// Updates `lists` after an event that touched `touched` (the node the
/// watch events name), as the aggregator does: the entries of those nodes
/// only; with `None`, the whole view (start, relist).
fn step(what: &str, lists: &mut Lists, cluster: &Cluster, touched: Option<&[usize]>) {
    let start = Instant::now();
    let changes = match touched {
        None => {
            let (view, read_ms) = cluster.view();
            let start = Instant::now();
            let changes = lists.update(view, NOW);
            print!("| {what} | whole view {read_ms:.1} | {:.1} ", ms(start));
            changes
        }
        Some(nodes) => {
            // The aggregator finds a node's objects through the watches'
            // by-node index; here, by their place in the vectors.
            let names: HashSet<String> = nodes.iter().map(|i| format!("node-{i:06}")).collect();
            let on = |objects: &[Pod], per_node: usize| -> Vec<Pod> {
                nodes
                    .iter()
                    .flat_map(|i| &objects[i * per_node..(i + 1) * per_node])
                    .cloned()
                    .collect()
            };
            let entries = ClusterView::entries_of(
                &names,
                nodes.iter().map(|i| &cluster.nodes[*i]),
                &on(&cluster.reporters, 2),
                &on(&cluster.targets, 2),
            );
            let read_ms = ms(start);
            let start = Instant::now();
            let changes = lists.update_nodes(entries, NOW);
            print!(
                "| {what} | {} node(s) {read_ms:.1} | {:.1} ",
                names.len(),
                ms(start)
            );
            changes
        }
    };
    let (count, bytes) = summary(&changes);
    println!("| {:.1} | {count} | {} |", ms(start), bytes / count.max(1));
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a node count"))
        .unwrap_or(100_000);
    let mut cluster = Cluster::new(n);
    let mut lists = Lists::new(PinglistConfig::default());
    println!("{n} nodes, 3 pods each; sampled 40 stable + 2 rotating, W = 8\n");
    println!("| event | read (ms) | update (ms) | total (ms) | lists published | bytes per list |");
    println!("|---|---|---|---|---|---|");
    step("start (every list)", &mut lists, &cluster, None);
    step(
        "heartbeat (nothing changed)",
        &mut lists,
        &cluster,
        Some(&[n / 3]),
    );
    cluster.add(n);
    step("one join", &mut lists, &cluster, Some(&[n]));
    cluster.add(n + 1);
    step("another join", &mut lists, &cluster, Some(&[n + 1]));
    let cordoned = &mut cluster.nodes[n / 2];
    cordoned.spec.get_or_insert_default().unschedulable = Some(true);
    step("one cordon", &mut lists, &cluster, Some(&[n / 2]));
    cluster.nodes[n / 2]
        .spec
        .get_or_insert_default()
        .unschedulable = Some(false);
    step(
        "relist (whole view, one uncordon)",
        &mut lists,
        &cluster,
        None,
    );
    let start = Instant::now();
    let renewed = lists.tick(NOW + 30_000);
    let (count, bytes) = summary(&renewed);
    println!(
        "| epoch boundary (renewals) | - | {:.1} | {count} | {} |",
        ms(start),
        bytes / count.max(1)
    );
}
