//! `GET /usage`: the dashboard, one self-contained page (HTML, CSS and JS embedded in the
//! binary, charts drawn on `<canvas>`, no CDN). It asks for the gateway key once, keeps it
//! in `localStorage`, and calls the API with it as a Bearer token.

pub const PAGE: &str = include_str!("dashboard.html");

/// The headers the page is served with: a Content-Security-Policy that allows only its own
/// inline script (by hash), no framing, no sniffing, no referrer.
pub fn security_headers() -> &'static [(&'static str, String)] {
    static HEADERS: std::sync::LazyLock<Vec<(&'static str, String)>> =
        std::sync::LazyLock::new(|| {
            vec![
                ("content-security-policy", csp(PAGE)),
                ("x-frame-options", "DENY".into()),
                ("x-content-type-options", "nosniff".into()),
                ("referrer-policy", "no-referrer".into()),
            ]
        });
    &HEADERS
}

/// `script-src` names the sha256 of each inline `<script>` block of `page`.
fn csp(page: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut hashes = String::new();
    let mut rest = page;
    while let Some(open) = rest.find("<script>") {
        let body = &rest[open + "<script>".len()..];
        let Some(close) = body.find("</script>") else {
            break;
        };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..close]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        hashes.push_str(&format!(" 'sha256-{b64}'"));
        rest = &body[close..];
    }
    format!(
        "default-src 'none'; script-src{hashes}; style-src 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
         base-uri 'none'; form-action 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_one_script_by_hash() {
        let policy = csp(PAGE);
        assert_eq!(policy.matches("'sha256-").count(), 1, "{policy}");
        assert!(
            !policy.contains("unsafe-inline';") || policy.contains("style-src 'unsafe-inline'")
        );
        assert!(policy.contains("frame-ancestors 'none'"));
        let p = csp("<p><script>a()</script><script>b()</script>");
        assert_eq!(p.matches("'sha256-").count(), 2, "{p}");
    }
}
