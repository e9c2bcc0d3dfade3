//! `GET /usage`: the dashboard, one self-contained page (HTML, CSS and JS embedded in the
//! binary, charts drawn on `<canvas>`, no CDN). It asks for the gateway key once, keeps it
//! in `localStorage`, and calls the API with it as a Bearer token.

pub const PAGE: &str = include_str!("dashboard.html");
