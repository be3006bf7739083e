//! The web page at `/`: a live heatmap of the matrix and the findings.
//!
//! Everything is embedded in the binary (`include_str!`): no CDN, no fetch
//! to anywhere but the aggregator itself (the Content-Security-Policy says
//! so to the browser too). The page polls [`MATRIX_COMPACT_PATH`] and
//! [`FINDINGS_PATH`] and draws the matrix on a `<canvas>`, so 1,000 nodes
//! (a million cells) cost a few MB per poll and no DOM node per cell.
//!
//! For tests and scripts the page exposes its state (see `app.js`):
//! `window.netmatrix.cellStatus(from, to[, "pod"|"host"])`, `.nodes()`,
//! `.findings()`, `.updates`; the findings list items carry
//! `data-kind`/`data-nodes`; up to 50 nodes a visually hidden `<table
//! id="cells">` has one `<td data-from data-to data-network data-status>`
//! per cell.

mod compact;

pub use compact::compact;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use netmatrix_api::{
    FINDINGS_PATH, MATRIX_CELL_PATH, MATRIX_COMPACT_PATH, MATRIX_PATH, NODE_FACTS_PATH,
    REPORTS_PATH,
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// Where the page's assets are served, `/assets/{name}`.
pub const ASSETS_PATH: &str = "/assets/{name}";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response();
    if content_type.starts_with("text/html") {
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}

/// `GET /`: the page.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/{name}`: the page's script, style sheet and icon.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        "favicon.svg" => page("image/svg+xml", FAVICON_SVG),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// The endpoint list (`GET /api`, and the page's footer).
pub const ENDPOINTS: &str = concat!(
    "netmatrix aggregator\n\n",
    "GET  /                        web page: live matrix and findings\n",
    "GET  /api/v1/matrix           node-to-node connectivity matrix (JSON)\n",
    "GET  /api/v1/matrix/compact   the same, a few bytes per cell (JSON)\n",
    "GET  /api/v1/matrix/cell      one cell: ?from=NODE&to=NODE[&network=pod|host]\n",
    "GET  /api/v1/findings         what is broken and where (JSON)\n",
    "GET  /api/v1/facts            one node's own network, from its host agent: ?node=NODE\n",
    "POST /api/v1/reports          agent reports\n",
    "GET  /metrics                 Prometheus metrics\n",
    "GET  /healthz                 liveness\n",
);

/// `GET /api`: the endpoint list as text.
pub async fn api_index() -> &'static str {
    ENDPOINTS
}

// The list above must name the real paths.
const _: () = {
    assert!(const_contains(ENDPOINTS, MATRIX_PATH));
    assert!(const_contains(ENDPOINTS, MATRIX_COMPACT_PATH));
    assert!(const_contains(ENDPOINTS, MATRIX_CELL_PATH));
    assert!(const_contains(ENDPOINTS, FINDINGS_PATH));
    assert!(const_contains(ENDPOINTS, NODE_FACTS_PATH));
    assert!(const_contains(ENDPOINTS, REPORTS_PATH));
};

const fn const_contains(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let mut i = 0;
    while i + n.len() <= h.len() {
        let mut j = 0;
        while j < n.len() && h[i + j] == n[j] {
            j += 1;
        }
        if j == n.len() {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_its_own_assets() {
        for asset in ["/assets/app.js", "/assets/app.css", "/assets/favicon.svg"] {
            assert!(INDEX_HTML.contains(asset), "{asset}");
        }
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!text.contains("http://"), "no absolute URL");
            assert!(!text.contains("https://"), "no absolute URL");
        }
        assert!(APP_JS.contains(MATRIX_COMPACT_PATH));
        assert!(APP_JS.contains(FINDINGS_PATH));
        assert!(APP_JS.contains(MATRIX_CELL_PATH));
    }
}
