//! The lists on generated clusters: what each kind of event changes (one
//! test per row of design 20's table), checked against a rebuild of every
//! list, the staggering of renewals, and the ETag's stability.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use netmatrix_api::{NodeSkip, PeerRole, SrvAgent};
use netmatrix_runtime::k8s::targets::PodInfo;

use super::build::{ROTATION_WINDOW_EPOCHS, build};
use super::view::NodeEntry;
use super::*;

/// 2030-01-15, on an epoch boundary of 30 s.
const NOW: u64 = 1_894_665_600_000;
const EPOCH_MS: u64 = 30_000;
const BIG: usize = 5_000;
const SMALL: usize = 50;

const POD: NetworkMode = NetworkMode::Pod;
const HOST: NetworkMode = NetworkMode::Host;

fn cfg() -> PinglistConfig {
    PinglistConfig {
        sampling: PeerSampling::default(),
        epoch_ms: EPOCH_MS,
        aggregators: vec!["10.244.0.5:8080".parse().unwrap()],
        apiserver_ip: Some("10.96.0.1".parse().unwrap()),
    }
}

fn name(i: usize) -> String {
    format!("node-{i:05}")
}

fn ip(base: [u8; 2], i: usize, last: u8) -> IpAddr {
    let i = u16::try_from(i).unwrap().to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(base[0], base[1] + i[0], i[1], last))
}

fn info(node: &str, pod: &str, ip: IpAddr, component: &str) -> PodInfo {
    PodInfo {
        node: node.to_owned(),
        pod: pod.to_owned(),
        ip,
        component: Some(component.to_owned()),
        started_unix_ms: Some(1_700_000_000_000),
        ready: true,
        ready_since_unix_ms: Some(1_700_000_001_000),
    }
}

/// Node `i` as the chart runs it: a pod agent and a companion (the pod
/// network's targets) and a host agent.
pub(super) fn entry(i: usize) -> NodeEntry {
    let node = name(i);
    let agent = info(&node, &format!("agent-{i}"), ip([10, 0], i, 2), "agent");
    NodeEntry {
        skip: None,
        pod_targets: vec![
            agent.clone(),
            info(
                &node,
                &format!("companion-{i}"),
                ip([10, 0], i, 3),
                "companion",
            ),
        ],
        host_targets: vec![info(
            &node,
            &format!("host-agent-{i}"),
            ip([172, 16], i, 1),
            "host-agent",
        )],
        pod_agents: vec![agent],
    }
}

pub(super) fn entries(n: usize) -> BTreeMap<String, NodeEntry> {
    (0..n).map(|i| (name(i), entry(i))).collect()
}

/// The lists of an `n`-node cluster at [`NOW`].
fn lists(n: usize) -> Lists {
    let mut lists = Lists::new(cfg());
    let changes = lists.update(ClusterView::from_entries(entries(n)), NOW);
    assert_eq!(changes.len(), 2 * n);
    lists
}

/// The 5,000-node lists, built once (a few seconds unoptimised).
fn big() -> Lists {
    static BIG_LISTS: OnceLock<Lists> = OnceLock::new();
    BIG_LISTS.get_or_init(|| lists(BIG)).clone()
}

/// Applies `edit` to the view and updates at [`NOW`]; returns the lists
/// published (removals are not expected here). Small clusters are checked
/// against a rebuild of every list each time; at 5,000 nodes a rebuild
/// takes seconds unoptimised, so only the ring changes (the subtle
/// candidates) are, with [`after_checked`], and the other rows compare
/// with sets computed apart.
///
/// Every edit is also applied incrementally, as the watches' events drive
/// it ([`Lists::update_nodes`] with the entries of the nodes that differ),
/// to a copy: it must publish the same lists with the same bytes and end in
/// the same state as the whole-view update.
fn after(lists: &mut Lists, edit: impl FnOnce(&mut BTreeMap<String, NodeEntry>)) -> BTreeSet<Key> {
    let mut nodes = lists.view().nodes.clone();
    edit(&mut nodes);
    let touched: Vec<(String, Option<NodeEntry>)> = nodes
        .keys()
        .chain(lists.view().nodes.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|n| nodes.get(*n) != lists.view().nodes.get(*n))
        .map(|n| (n.clone(), nodes.get(n).cloned()))
        .collect();
    let mut incremental = lists.clone();
    let changes = lists.update(ClusterView::from_entries(nodes), NOW);
    let by_events = incremental.update_nodes(touched, NOW);
    assert_eq!(by_events, changes, "the incremental update differs");
    assert_eq!(incremental.view, lists.view);
    assert_eq!(incremental.etags(), lists.etags());
    if lists.len() < 1000 {
        assert_consistent(lists);
    }
    published(&changes)
}

fn after_checked(
    lists: &mut Lists,
    edit: impl FnOnce(&mut BTreeMap<String, NodeEntry>),
) -> BTreeSet<Key> {
    let changed = after(lists, edit);
    assert_consistent(lists);
    changed
}

fn published(changes: &[Change]) -> BTreeSet<Key> {
    changes
        .iter()
        .map(|c| match c {
            Change::Publish(key, _) => key.clone(),
            Change::Remove(key) => panic!("{key:?} removed"),
        })
        .collect()
}

/// Every list the state holds is exactly what a rebuild from scratch (same
/// rotation windows) gives: no candidate was missed.
fn assert_consistent(lists: &Lists) {
    let expected: BTreeSet<Key> = lists.view.keys().collect();
    let held: BTreeSet<Key> = lists.lists.keys().cloned().collect();
    assert_eq!(
        held, expected,
        "one list per node and network with an agent"
    );
    for network in NETWORKS {
        let ring = ring_of(&lists.view, network);
        for (key, state) in lists.lists.iter().filter(|(k, _)| k.1 == network) {
            let list = build(
                &lists.view,
                &ring,
                (&key.0, key.1),
                &state.window,
                &lists.gone,
                &lists.cfg,
            );
            assert_eq!(Published::of(&list).etag, state.etag, "{key:?} is stale");
        }
    }
}

fn keys(nodes: impl IntoIterator<Item = String>, network: NetworkMode) -> BTreeSet<Key> {
    nodes.into_iter().map(|n| (n, network)).collect()
}

/// The nodes whose stable set (on `network`'s current ring) holds `node`.
fn stable_of(lists: &Lists, node: &str, network: NetworkMode) -> BTreeSet<String> {
    let ring = ring_of(&lists.view, network);
    lists
        .view
        .ring(network)
        .iter()
        .filter(|x| ring.stable_targets(x, &lists.cfg.sampling).contains(&node))
        .cloned()
        .collect()
}

/// The lists whose frozen rotation names `node`.
fn rotating_to(lists: &Lists, node: &str, network: NetworkMode) -> BTreeSet<String> {
    lists
        .lists
        .iter()
        .filter(|(k, s)| k.1 == network && s.window.nodes().any(|n| n == node))
        .map(|(k, _)| k.0.clone())
        .collect()
}

fn union(sets: impl IntoIterator<Item = BTreeSet<Key>>) -> BTreeSet<Key> {
    sets.into_iter().flatten().collect()
}

fn all(n: usize, networks: &[NetworkMode]) -> BTreeSet<Key> {
    networks
        .iter()
        .flat_map(|net| keys((0..n).map(name), *net))
        .collect()
}

const N: usize = 1234;

// Row 1: a Node heartbeat or status with the same Ready, cordon and pods.

#[test]
fn a_heartbeat_changes_no_list() {
    let mut big = big();
    assert!(after(&mut big, |_| {}).is_empty());
    let mut small = lists(SMALL);
    assert!(after(&mut small, |_| {}).is_empty());
}

// Row 2: a node cordoned, uncordoned, NotReady or Ready (it leaves or
// joins the rings).

#[test]
fn a_cordon_changes_the_lists_naming_the_node_sampled() {
    let mut lists = big();
    let node = name(N);
    let mut expected = BTreeSet::new();
    for network in NETWORKS {
        let stable = stable_of(&lists, &node, network);
        assert_eq!(stable.len(), 40, "K stable neighbours");
        expected.extend(keys(stable, network));
        // Beyond the design's table: a list whose rotation names the node
        // changes too, since its entry gains `skip` (else that agent would
        // probe a draining node until its next renewal).
        expected.extend(keys(rotating_to(&lists, &node, network), network));
        expected.insert((node.clone(), network));
    }
    let changed = after_checked(&mut lists, |nodes| {
        nodes.get_mut(&node).unwrap().skip = Some(NodeSkip::Cordoned)
    });
    assert_eq!(changed, expected);
    assert!(
        changed.len() < 2 * (40 + 2 * 9 + 1) + 10,
        "{}",
        changed.len()
    );
    // Uncordoned: the same lists again.
    let back = after(&mut lists, |nodes| {
        nodes.get_mut(&node).unwrap().skip = None
    });
    assert_eq!(back, expected);
}

#[test]
fn a_cordon_changes_every_list_in_a_full_mesh() {
    let mut lists = lists(SMALL);
    let changed = after(&mut lists, |nodes| {
        nodes.get_mut(&name(7)).unwrap().skip = Some(NodeSkip::NotReady)
    });
    assert_eq!(changed, all(SMALL, &NETWORKS));
}

// Row 3: a companion re-created (new pod name or IP) on N.

fn recreate_companion(nodes: &mut BTreeMap<String, NodeEntry>, i: usize) {
    let companion = &mut nodes.get_mut(&name(i)).unwrap().pod_targets[1];
    companion.pod = format!("companion-{i}-new");
    companion.ip = ip([10, 0], i, 4);
}

#[test]
fn a_new_companion_changes_the_pod_lists_naming_its_node_sampled() {
    let mut lists = big();
    let node = name(N);
    let expected = union([
        keys(stable_of(&lists, &node, POD), POD),
        keys(rotating_to(&lists, &node, POD), POD),
        keys([node.clone()], POD),
    ]);
    let changed = after(&mut lists, |nodes| recreate_companion(nodes, N));
    assert_eq!(changed, expected);
}

#[test]
fn a_new_companion_changes_every_pod_list_in_a_full_mesh() {
    let mut lists = lists(SMALL);
    let changed = after(&mut lists, |nodes| recreate_companion(nodes, 7));
    assert_eq!(changed, all(SMALL, &[POD]));
}

// Row 4: a pod agent Ready, not Ready, gone or new on N.

fn agent_not_ready(nodes: &mut BTreeMap<String, NodeEntry>, i: usize) {
    let entry = nodes.get_mut(&name(i)).unwrap();
    entry.pod_agents[0].ready = false;
    entry.pod_targets[0].ready = false;
}

#[test]
fn an_agent_readiness_changes_the_srv_truth_of_both_networks_sampled() {
    let mut lists = big();
    let node = name(N);
    // The SRV truth is scoped to the own and stable nodes.
    let expected = union(NETWORKS.map(|network| {
        let mut scope = keys(stable_of(&lists, &node, network), network);
        scope.insert((node.clone(), network));
        scope
    }));
    let changed = after(&mut lists, |nodes| agent_not_ready(nodes, N));
    assert_eq!(changed, expected);
    let list = built(&lists, &node, HOST);
    assert_eq!(list.local_pod_agent, Some(ip([10, 0], N, 2)));
    assert!(
        !list
            .srv
            .agents
            .iter()
            .find(|a| a.node == node)
            .unwrap()
            .ready
    );
}

#[test]
fn a_departed_agent_is_gone_for_its_stable_neighbours_then_expires() {
    let mut lists = big();
    let node = name(N);
    let agent_ip = ip([10, 0], N, 2);
    let scope = stable_of(&lists, &node, POD);
    let changes = lists.update(
        {
            let mut nodes = lists.view().nodes.clone();
            let entry = nodes.get_mut(&node).unwrap();
            entry.pod_agents.clear();
            entry.pod_targets.remove(0);
            ClusterView::from_entries(nodes)
        },
        NOW,
    );
    // Its own pod list goes with it; its host list stays.
    assert!(changes.contains(&Change::Remove((node.clone(), POD))));
    let neighbour = scope.iter().next().unwrap();
    let gone = built(&lists, neighbour, POD).srv.gone;
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].ip, gone[0].since_unix_ms), (agent_ip, NOW));
    let far = name((N + BIG / 2) % BIG);
    assert!(built(&lists, &far, POD).srv.gone.is_empty(), "out of scope");
    // Kept as long as DNS may serve it, then dropped.
    let still = lists.tick(NOW + DNS_MAX_NEGATIVE_TTL_MS - 1);
    assert!(
        still
            .iter()
            .all(|c| c.key().0 != *neighbour || !scope.contains(&c.key().0))
            || !still.is_empty()
    );
    let expired = published(&lists.tick(NOW + DNS_MAX_NEGATIVE_TTL_MS));
    assert!(expired.contains(&(neighbour.clone(), POD)));
    assert!(built(&lists, neighbour, POD).srv.gone.is_empty());
}

#[test]
fn an_agent_readiness_changes_every_list_in_a_full_mesh() {
    let mut lists = lists(SMALL);
    let changed = after(&mut lists, |nodes| agent_not_ready(nodes, 7));
    assert_eq!(changed, all(SMALL, &NETWORKS));
}

// Row 5: a new node with its first targets (a join).

#[test]
fn a_join_changes_its_own_lists_and_its_stable_neighbours_sampled() {
    let mut lists = big();
    let node = name(BIG);
    let changed = after_checked(&mut lists, |nodes| {
        nodes.insert(node.clone(), entry(BIG));
    });
    let expected = union(NETWORKS.map(|network| {
        let mut k = keys(stable_of(&lists, &node, network), network);
        assert_eq!(k.len(), 40);
        k.insert((node.clone(), network));
        k
    }));
    assert_eq!(changed, expected);
    // Nobody's rotation names it before their renewal.
    assert!(rotating_to(&lists, &node, POD).is_empty());
}

#[test]
fn a_join_changes_every_list_in_a_full_mesh() {
    let mut lists = lists(SMALL);
    let changed = after(&mut lists, |nodes| {
        nodes.insert(name(SMALL), entry(SMALL));
    });
    // Its pod agent joins every list's (complete) SRV truth: both networks.
    assert_eq!(changed, all(SMALL + 1, &NETWORKS));
    let mut host_only = self::lists(SMALL);
    let changed = after(&mut host_only, |nodes| {
        let mut e = entry(SMALL);
        e.pod_targets.clear();
        e.pod_agents.clear();
        nodes.insert(name(SMALL), e);
    });
    assert_eq!(changed, all(SMALL + 1, &[HOST]), "all of that network");
}

// Row 6: an epoch boundary.

/// Each list renews once per window, 1/W of them per epoch; a full mesh
/// has no rotation to renew.
#[test]
fn renewals_are_staggered_over_the_window() {
    let mut lists = big();
    let mut renewed: BTreeMap<Key, u32> = BTreeMap::new();
    for e in 1..=ROTATION_WINDOW_EPOCHS {
        let changed = published(&lists.tick(NOW + e * EPOCH_MS));
        for network in NETWORKS {
            let per_network = changed.iter().filter(|k| k.1 == network).count();
            let share = BIG as f64 / ROTATION_WINDOW_EPOCHS as f64;
            assert!(
                (per_network as f64 - share).abs() < share * 0.2,
                "epoch {e}: {per_network} lists of {BIG}"
            );
        }
        for key in changed {
            *renewed.entry(key).or_default() += 1;
        }
    }
    assert_eq!(renewed.len(), 2 * BIG, "every list renewed");
    assert!(renewed.values().all(|&n| n == 1), "once per window");

    let mut small = self::lists(SMALL);
    for e in 1..=ROTATION_WINDOW_EPOCHS {
        assert!(small.tick(NOW + e * EPOCH_MS).is_empty());
    }
}

// The lists themselves.

fn built(lists: &Lists, node: &str, network: NetworkMode) -> Pinglist {
    let ring = ring_of(&lists.view, network);
    let key = (node.to_owned(), network);
    build(
        &lists.view,
        &ring,
        (node, network),
        &lists.lists[&key].window,
        &lists.gone,
        &lists.cfg,
    )
}

#[test]
fn a_full_mesh_list_names_every_node_and_the_whole_srv_truth() {
    let mut lists = lists(SMALL);
    after(&mut lists, |nodes| {
        nodes.get_mut(&name(3)).unwrap().skip = Some(NodeSkip::Cordoned)
    });
    for network in NETWORKS {
        let list = built(&lists, &name(0), network);
        assert_eq!(list.validate_for(&name(0), network), Ok(()));
        assert_eq!(list.sampling, None);
        assert_eq!(list.nodes.len(), SMALL, "skipped nodes included");
        assert_eq!(list.nodes[&name(3)].skip, Some(NodeSkip::Cordoned));
        assert!(list.srv.complete);
        assert_eq!(list.srv.agents.len(), SMALL, "skipped nodes' agents too");
        assert_eq!(list.aggregators, cfg().aggregators);
        assert_eq!(list.apiserver_ip, cfg().apiserver_ip);
    }
    let pod = built(&lists, &name(0), POD);
    let roles: Vec<PeerRole> = pod.nodes[&name(1)].pods.iter().map(|p| p.role).collect();
    assert_eq!(roles, [PeerRole::Agent, PeerRole::Companion]);
    assert_eq!(pod.local_pod_agent, None);
    let host = built(&lists, &name(0), HOST);
    assert_eq!(host.nodes[&name(1)].pods[0].role, PeerRole::HostAgent);
    assert_eq!(host.local_pod_agent, Some(ip([10, 0], 0, 2)));
    assert_eq!(
        host.srv.agents[1],
        SrvAgent {
            node: name(1),
            pod: "agent-1".into(),
            ip: ip([10, 0], 1, 2),
            ready: true,
            started_unix_ms: Some(1_700_000_000_000),
            ready_since_unix_ms: Some(1_700_000_001_000),
        }
    );
}

#[test]
fn a_sampled_list_names_its_stable_and_rotating_nodes() {
    let lists = big();
    let me = name(N);
    let list = built(&lists, &me, POD);
    assert_eq!(list.validate_for(&me, POD), Ok(()));
    let sampling = list.sampling.as_ref().unwrap();
    assert_eq!(sampling.ring_nodes, BIG as u32);
    assert_eq!(sampling.epoch_ms, EPOCH_MS);
    assert_eq!(sampling.stable.len(), 40);
    assert_eq!(sampling.rotation.len(), ROTATION_WINDOW_EPOCHS as usize + 1);
    let base = sampling.rotation[0].epoch;
    assert!(base <= NOW / EPOCH_MS && NOW / EPOCH_MS <= base + ROTATION_WINDOW_EPOCHS);
    // Each epoch's targets are exactly the ring's, stable then rotating.
    let ring = ring_of(&lists.view, POD);
    for r in &sampling.rotation {
        let both: Vec<String> = [sampling.stable.clone(), r.nodes.clone()].concat();
        let targets: Vec<String> = ring
            .targets(&me, &lists.cfg.sampling, r.epoch)
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(both, targets, "epoch {}", r.epoch);
    }
    let named: BTreeSet<&String> = std::iter::once(&me)
        .chain(&sampling.stable)
        .chain(sampling.rotation.iter().flat_map(|r| &r.nodes))
        .collect();
    assert_eq!(list.nodes.keys().collect::<BTreeSet<_>>(), named);
    assert!(!list.srv.complete);
    assert_eq!(list.srv.agents.len(), 41, "own and stable nodes only");
    let body = Published::of(&list).body;
    assert!(body.len() < 24 << 10, "{} bytes", body.len());
}

/// A restart (a fresh state, later in the same window) computes the same
/// bytes: agents holding the ETag get 304s, not bodies.
#[test]
fn the_same_inputs_give_the_same_etags() {
    let a = big();
    let mut b = Lists::new(cfg());
    b.update(a.view().clone(), NOW + EPOCH_MS / 2);
    for (key, state) in &a.lists {
        assert_eq!(b.etag(key), Some(state.etag.as_str()), "{key:?}");
    }
    let small = lists(SMALL);
    let book = PinglistBook::fixed(small.view().clone(), cfg(), NOW);
    assert_eq!(book.len(), 2 * SMALL);
    let rx = book.subscribe(&name(7), HOST).unwrap();
    assert_eq!(
        Some(rx.borrow().etag.as_str()),
        small.etag(&(name(7), HOST))
    );
    assert!(book.subscribe("no-such-node", POD).is_none());
}

/// Publishing wakes the changed list's waiters only, and a removed list's
/// waiters learn it is gone.
#[tokio::test]
async fn the_book_wakes_only_the_changed_lists() {
    let mut lists = Lists::new(cfg());
    let book = PinglistBook::default();
    book.apply(lists.update(ClusterView::from_entries(entries(SMALL)), NOW));
    assert_eq!(book.len(), 2 * SMALL);
    let mut pod0 = book.subscribe(&name(0), POD).unwrap();
    let mut host0 = book.subscribe(&name(0), HOST).unwrap();
    let mut gone = book.subscribe(&name(9), POD).unwrap();
    let mut nodes = entries(SMALL);
    recreate_companion(&mut nodes, 7);
    let entry = nodes.get_mut(&name(9)).unwrap();
    entry.pod_agents.clear();
    entry.pod_targets.clear();
    let changes = lists.update(ClusterView::from_entries(nodes), NOW);
    book.apply(changes);
    assert!(pod0.has_changed().unwrap());
    assert!(!pod0.borrow_and_update().body.is_empty());
    assert!(
        host0.has_changed().unwrap(),
        "n9's agent left the SRV truth"
    );
    assert!(gone.changed().await.is_err(), "no list any more");
    assert_eq!(book.len(), 2 * SMALL - 1);
    // The same view again: nothing to wake.
    let again = lists.update(lists.view().clone(), NOW);
    assert!(again.is_empty());
    host0.borrow_and_update();
    assert!(!host0.has_changed().unwrap());
}
