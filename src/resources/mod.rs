//! What the server acts on besides opening files: tree operations
//! (SPEC §3.6) and the server's own files, which no policy can hand over.

pub mod protected;
pub mod tree;
