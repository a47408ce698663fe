//! `arca-sandbox`: run a command in an isolated Linux root (user, mount, pid, net, uts and
//! ipc namespaces; fork then unshare; pivot_root; bind-mounted inputs).
//!
//! Not filled yet: this crate holds its place in the crate map (see ARCHITECTURE.md) and
//! exports nothing. It knows nothing about Nix and depends on no other project crate; it
//! is the one place where raw syscalls and `unsafe` will live.
