//! The web page at `/`: a live heatmap of the matrix and the findings. This
//! module holds the page's assets and serves them; the routes are
//! [`crate::serve`]'s.
//!
//! Everything is embedded in the binary (`include_str!`): no CDN, no fetch
//! to anywhere but the aggregator itself (the Content-Security-Policy says
//! so to the browser too). The page polls [`MATRIX_COMPACT_PATH`](netmatrix_api::MATRIX_COMPACT_PATH)
//! and [`FINDINGS_PATH`](netmatrix_api::FINDINGS_PATH) and draws the matrix on a `<canvas>`, so 1,000 nodes
//! (a million cells) cost a few MB per poll and no DOM node per cell.
//!
//! For tests and scripts the page exposes its state (see `app.js`):
//! `window.netmatrix.cellStatus(from, to[, "pod"|"host"])`, `.nodes()`,
//! `.findings()`, `.updates`; the findings list items carry
//! `data-kind`/`data-nodes`; up to 50 nodes a visually hidden `<table
//! id="cells">` has one `<td data-from data-to data-network data-status>`
//! per cell.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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

#[cfg(test)]
mod tests {
    use super::*;
    use netmatrix_api::{FINDINGS_PATH, MATRIX_CELL_PATH, MATRIX_COMPACT_PATH};

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
