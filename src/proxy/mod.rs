//! The proxy: listener → pipeline → headers/upstream/body.
//!
//! `pipeline` is the one file that calls every phase in order; the others
//! are the pieces it calls. See `pipeline.rs` for the picture.

pub mod body;
pub mod h1;
pub mod h1codec;
pub mod h1server;
pub mod headers;
pub mod limits;
pub mod listener;
pub mod pipeline;
pub mod pool;
pub mod relayed;
pub mod standing;
pub mod tls;
pub mod upstream;
pub mod websocket;
pub mod wire;
pub mod ws_progress;

pub use pipeline::Gateway;
