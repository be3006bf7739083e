//! Prints what the host agent reads of this network namespace's network
//! (the node facts) and what it costs: the time of one reading and its
//! size in a report. Run it where a host agent would run, e.g. in a lab
//! node: `ip netns exec <prefix>-n2 target/release/examples/node_facts`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200);
    let facts = netmatrix_agent::facts::read()?;
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(netmatrix_agent::facts::read()?);
    }
    let per_read = started.elapsed() / runs;
    let json = serde_json::to_vec(&facts)?;
    println!("{}", serde_json::to_string_pretty(&facts)?);
    eprintln!(
        "links {}, routes {}, fdb {}, neighbours {}: {} bytes of JSON; one reading {:?} (mean of {runs})",
        facts.links.len(),
        facts.routes.len(),
        facts.fdb.len(),
        facts.neighbours.len(),
        json.len(),
        per_read
    );
    Ok(())
}
