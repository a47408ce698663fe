//! `arca-nar`: Nix archives.
