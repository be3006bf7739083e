//! Flags both binaries take, declared once ([`clap::Args`] groups that
//! each binary flattens into its own), so that their names, environment
//! variables, defaults and bounds cannot drift apart.

use netmatrix_api::sampling::PeerSampling;

/// How the remote nodes are picked on a large cluster (`--full-mesh-max-nodes`,
/// `--sampled-nodes`, `--rotating-nodes`; see `docs/sampling.md`). On
/// pinglists the aggregator's values decide; agents use theirs only with
/// `--peer-discovery api`, and must then all use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct SamplingFlags {
    /// Clusters of up to this many nodes are probed as a full mesh (every
    /// agent probes every node). Above it each agent probes its own node and
    /// --sampled-nodes + --rotating-nodes remote nodes picked on a hash ring
    /// over node names, so that every node is probed by that many agents.
    #[arg(long, env = "NETMATRIX_FULL_MESH_MAX_NODES", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub full_mesh_max_nodes: u32,

    /// In a sampled cluster: remote nodes each agent always probes (its
    /// nearest on the ring, half on each side, so that these pairs are
    /// probed both ways; with an odd number the farthest one ahead is probed
    /// one way only). A node joining or leaving changes one of them on this
    /// many agents.
    #[arg(long, env = "NETMATRIX_SAMPLED_NODES", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub sampled_nodes: u32,

    /// In a sampled cluster: remote nodes probed in addition, moving along
    /// the ring every 6 rounds, so that over time every pair of nodes is
    /// probed (0: none).
    #[arg(long, env = "NETMATRIX_ROTATING_NODES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub rotating_nodes: u32,
}

impl SamplingFlags {
    pub fn sampling(&self) -> PeerSampling {
        PeerSampling {
            full_mesh_max_nodes: self.full_mesh_max_nodes as usize,
            stable: self.sampled_nodes as usize,
            rotating: self.rotating_nodes as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sampling: SamplingFlags,
    }

    #[test]
    fn defaults_and_bounds() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.sampling.sampling(), PeerSampling::default());
        assert!(Cli::try_parse_from(["x", "--sampled-nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--full-mesh-max-nodes", "0"]).is_err());
        let cli = Cli::try_parse_from(["x", "--rotating-nodes", "0"]).unwrap();
        assert_eq!(cli.sampling.sampling().rotating, 0);
    }
}
