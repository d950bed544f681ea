//! The web console (`web/`, built into `web/dist` by `npm run build`), embedded
//! in the binary and served at `/`.
//!
//! A path that names a built file gets that file; any other path outside
//! `/api/` gets `index.html`, so the console's client-side routes
//! (`/deployments/7f3a`, `/audit`) survive a reload. Vite puts every script and
//! style under `assets/` with a content hash in its name, so those are cached
//! for good; `index.html` is revalidated on every load so a new build is picked
//! up at once. When the console was not built (`cargo build` alone), `/` says
//! how to build it instead.
//!
//! In release builds the files are compiled into the binary; in debug builds
//! rust-embed reads them from `web/dist` at run time.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

use crate::error::ApiError;

#[derive(RustEmbed)]
#[folder = "../../web/dist"]
#[allow_missing = true]
struct Console;

const INDEX: &str = "index.html";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// Shown when the binary was built without the console.
const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>herald: console not built</title></head>
<body style=\"font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5\">
<h1>herald is running, but its web console was not built</h1>
<p>This binary was compiled before <code>web/dist</code> existed. Build the console and then herald:
<code>./scripts/run</code> does both (it needs Node.js and npm), or run
<code>npm ci &amp;&amp; npm run build</code> in <code>web/</code> and then <code>cargo build --release</code>.</p>
<p>The API works without it: see <code>docs/API.md</code> in herald's repository, and <a href=\"/healthz\">/healthz</a>.</p>
</body></html>
";

/// Whether the console was built into this binary.
pub fn is_embedded() -> bool {
    Console::get(INDEX).is_some()
}

/// Serves `uri`'s path from the console: the file, `index.html` for a
/// client-side route, 404 for `/api/…` and for a missing file under `assets/`.
pub async fn serve(uri: Uri) -> Response {
    serve_path(uri.path())
}

/// [`serve`] for a `GET` or `HEAD` request; anything else is 405 on a console path.
pub async fn serve_method(method: Method, uri: Uri) -> Response {
    if method == Method::GET || method == Method::HEAD {
        serve_path(uri.path())
    } else {
        ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path())).into_response()
    }
}

fn serve_path(path: &str) -> Response {
    if path == "/api" || path.starts_with("/api/") {
        return ApiError::NotFound(format!("no route for {path}")).into_response();
    }
    let relative = path.trim_start_matches('/');
    // rust-embed's keys are plain relative paths; refuse anything that tries to
    // climb out (debug builds read the folder from disk).
    if relative
        .split('/')
        .any(|segment| segment == ".." || segment.contains('\\'))
    {
        return ApiError::NotFound(format!("no file {path}")).into_response();
    }
    if !relative.is_empty()
        && relative != INDEX
        && let Some(file) = Console::get(relative)
    {
        let cache = if relative.starts_with("assets/") {
            IMMUTABLE
        } else {
            REVALIDATE
        };
        return file_response(file.data.into_owned(), file.metadata.mimetype(), cache);
    }
    if relative.starts_with("assets/") {
        // A script or style that is not there: a 404, not the page, so the
        // browser reports the real problem.
        return ApiError::NotFound(format!("no file {path}")).into_response();
    }
    match Console::get(INDEX) {
        Some(index) => file_response(index.data.into_owned(), "text/html; charset=utf-8", REVALIDATE),
        None => {
            let mut r = (StatusCode::NOT_FOUND, NOT_BUILT).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
            r
        }
    }
}

fn file_response(bytes: Vec<u8>, mime: &str, cache: &'static str) -> Response {
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    let mime = if mime.starts_with("text/") && !mime.contains("charset") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if mime.starts_with("text/html") {
        // The console never needs to be framed.
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let r = serve(path.parse().expect("a valid uri")).await;
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.into_body().collect().await.expect("a body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn header(h: &axum::http::HeaderMap, name: header::HeaderName) -> &str {
        h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn api_paths_are_never_the_console() {
        for path in ["/api", "/api/", "/api/nope", "/api/deployments/x/y"] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(
                header(&headers, header::CONTENT_TYPE),
                "application/problem+json",
                "{path}"
            );
            assert!(body.contains("no route"), "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn client_side_routes_get_the_page_and_missing_assets_do_not() {
        for path in ["/", "/deployments/7f3a", "/audit", "/login?invite=abc"] {
            let (status, headers, body) = get(path).await;
            assert!(
                header(&headers, header::CONTENT_TYPE).starts_with("text/html"),
                "{path}"
            );
            assert_eq!(header(&headers, header::CACHE_CONTROL), REVALIDATE, "{path}");
            if is_embedded() {
                assert_eq!(status, StatusCode::OK, "{path}");
                assert!(body.contains("<div id=\"root\">"), "{path}: {body}");
            } else {
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
                assert!(body.contains("scripts/run"), "{path}: {body}");
            }
        }
        let (status, _, _) = get("/assets/index-nothere.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get("/assets/../../Cargo.toml").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable_with_their_type() {
        let Some(asset) = Console::iter().find(|f| f.starts_with("assets/") && f.ends_with(".js")) else {
            // The console was not built; the page above covers that case.
            return;
        };
        let (status, headers, _) = get(&format!("/{asset}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, header::CACHE_CONTROL), IMMUTABLE);
        assert!(
            header(&headers, header::CONTENT_TYPE).contains("javascript"),
            "{headers:?}"
        );
    }

    #[tokio::test]
    async fn only_get_and_head() {
        let r = serve_method(Method::POST, "/".parse().expect("a valid uri")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = serve_method(Method::HEAD, "/audit".parse().expect("a valid uri")).await;
        assert!(r.status() == StatusCode::OK || r.status() == StatusCode::NOT_FOUND);
    }
}
