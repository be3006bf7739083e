//! The aggregator's web page in a real headless Chromium against the lab:
//! the page shows a healthy 3-node matrix, then, without a reload, the cells
//! of a node cut off (`overlay-down node-2`) turn failed and the finding
//! `node-isolated` appears. A screenshot is left in
//! `target/lab-artifacts/web-node-isolated.png` for a person to look at.
//!
//! Chromium is driven with the Chrome DevTools Protocol over
//! `--remote-debugging-pipe` (file descriptors 3 and 4, NUL-terminated JSON):
//! no websocket, no extra crate. The browser may only reach the lab's
//! loopback forwarder: every host name resolves to nothing but 127.0.0.1 and
//! every other request goes to a dead proxy.
//!
//! Needs root, the binaries (`cargo build --workspace --bins`) and Debian's
//! `chromium`.

mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use browser::{Browser, CHROMIUM};
use netmatrix_api::NodeState;
use netmatrix_lab::Fault;
use serde_json::json;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn artifacts_dir() -> PathBuf {
    // tests/ is the crate; target/ is beside it in the workspace.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("target/lab-artifacts")
}

/// JavaScript: whether the page shows every pod cell of `NODES` as `status`.
fn all_pod_cells(status: &str) -> String {
    format!(
        "(() => {{ const m = window.netmatrix; if (!m || !m.updates) return false; \
         const n = {nodes}; if (JSON.stringify(m.nodes()) !== JSON.stringify(n)) return false; \
         return n.every(a => n.every(b => m.cellStatus(a, b, 'pod') === '{status}')) \
           && n.every(a => n.every(b => document.querySelector( \
              `#cells td[data-network=pod][data-from='${{a}}'][data-to='${{b}}']`)?.dataset.status === '{status}')); }})()",
        nodes = json!(NODES),
    )
}

const DESCRIBE: &str = "(() => { const m = window.netmatrix; if (!m) return 'no window.netmatrix'; \
    const n = m.nodes(); return { updates: m.updates, error: m.error, state: document.body.dataset.state, \
    nodes: n, cells: n.map(a => a + ': ' + n.map(b => m.cellStatus(a, b, 'pod')).join(' ')), \
    findings: [...document.querySelectorAll('#findings li')].map(li => (li.dataset.kind || '') + ' ' + (li.dataset.nodes || '') + ' ' + li.textContent.slice(0, 120)) }; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_the_matrix_live_and_names_an_isolated_node() {
    let started = Instant::now();
    // Chromium first: a missing browser fails before a lab is built.
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install chromium; scripts/setup-test does)"
    );
    let lab = common::lab(true).await;
    let url = lab.aggregator_url();
    let allowed = url.trim_start_matches("http://").to_owned();
    let page_url = format!("{url}/");

    let mut browser = tokio::task::block_in_place(|| {
        let mut browser = Browser::launch(&allowed);
        browser.navigate(&page_url);
        browser.wait_until(
            "3 nodes, every pod cell ok",
            &all_pod_cells("ok"),
            common::WAIT,
            DESCRIBE,
        );
        let title = browser.eval("document.title");
        assert_eq!(title, "netmatrix");
        let updates = browser.eval("window.netmatrix.updates");
        eprintln!("page: {updates} updates so far");
        browser
    });

    // Findings are named once nodes are past their joining grace period.
    lab.wait_for("every node past its grace period", common::WAIT, |s| {
        s.matrix.rows.iter().all(|r| r.state == NodeState::Ready)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    let loads_before = tokio::task::block_in_place(|| {
        // A marker that a reload would wipe: the fault must reach this page.
        browser.eval("window.__sameDocument = true; performance.timeOrigin")
    });
    lab.fault(Fault::overlay_down("node-2"))
        .unwrap_or_else(|e| panic!("{e}"));
    let fault_at = Instant::now();

    let shot = artifacts_dir().join("web-node-isolated.png");
    tokio::task::block_in_place(|| {
        let failed = [
            ("node-1", "node-2"),
            ("node-2", "node-1"),
            ("node-2", "node-3"),
            ("node-3", "node-2"),
        ];
        let cells = failed
            .iter()
            .map(|(a, b)| format!("m.cellStatus('{a}', '{b}', 'pod') === 'failed'"))
            .collect::<Vec<_>>()
            .join(" && ");
        browser.wait_until(
            "node-2's cells failed",
            &format!("(() => {{ const m = window.netmatrix; return {cells}; }})()"),
            common::WAIT,
            DESCRIBE,
        );
        browser.wait_until(
            "finding node-isolated listed",
            "!!document.querySelector('#findings li[data-kind=\"node-isolated\"][data-nodes=\"node-2\"]') \
             && window.netmatrix.findings().some(f => f.kind === 'node-isolated')",
            common::WAIT,
            DESCRIBE,
        );
        // The cause, from node-2's own facts (its FDB and neighbour entries
        // for its peers are gone), on the finding's card.
        browser.wait_until(
            "the finding's cause shown",
            "(() => { const li = document.querySelector('#findings li[data-kind=\"node-isolated\"]'); \
             return !!li && li.querySelector('.cause').textContent.includes('node-2 has no neighbour entry for'); })()",
            common::WAIT,
            DESCRIBE,
        );
        eprintln!(
            "page: fault shown {:.1?} after injection",
            fault_at.elapsed()
        );
        assert_eq!(
            browser.eval("window.__sameDocument === true && performance.timeOrigin"),
            loads_before,
            "the page was reloaded"
        );
        // The cells that still work, and the history of a failed one.
        for (a, b) in [
            ("node-1", "node-3"),
            ("node-3", "node-1"),
            ("node-1", "node-1"),
        ] {
            assert_eq!(
                browser.eval(&format!("window.netmatrix.cellStatus('{a}', '{b}')")),
                "ok",
                "{a} -> {b}"
            );
        }
        let history = browser.eval("window.netmatrix.history('node-1', 'node-2')");
        let history = history.as_array().expect("history array");
        assert!(history.len() >= 2, "{history:?}");
        assert_eq!(history.last(), Some(&json!("failed")));
        assert!(history.contains(&json!("ok")), "{history:?}");

        // Open a failed cell's details for the person reading the screenshot.
        assert_eq!(
            browser.eval("window.netmatrix.select('node-1', 'node-2', 'pod')"),
            true
        );
        // The source node's own network, from its host agent.
        browser.wait_until(
            "node-1's facts in the details",
            "(() => { const f = document.querySelector('#details .facts'); \
             return !!f && f.textContent.includes(\"node-1's network\") && f.textContent.includes('flannel.1 vxlan up'); })()",
            common::WAIT,
            DESCRIBE,
        );
        std::thread::sleep(Duration::from_millis(600));
        browser.screenshot(&shot);
        eprintln!("screenshot: {}", shot.display());
    });
    drop(browser);

    lab.down().await;
    eprintln!("web page test took {:.1?}", started.elapsed());
}
