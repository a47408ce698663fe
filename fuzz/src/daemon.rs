//! The daemon server's request decoding: any byte stream a client sends (handshake,
//! operations, framed dumps) ends the connection cleanly, never panics, and never makes
//! the server allocate more than the limits allow.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Read, Write};

use arca_daemon_proto::wire::Limits;
use arca_daemon_proto::{serve, Peer, StoreOpError, StoreOps};
use arca_store_core::{Hash, HashAlgo, PathInfo, Store, StoreDir, StorePath};

/// A store with one valid path that accepts and discards whatever is added.
struct OnePathStore {
    store_dir: StoreDir,
    path: StorePath,
}

impl OnePathStore {
    fn new() -> OnePathStore {
        OnePathStore {
            store_dir: StoreDir::default(),
            path: StorePath::from_base_name("00000000000000000000000000000000-one")
                .expect("a valid base name"),
        }
    }
}

impl Store for OnePathStore {
    type Error = StoreOpError;
    type Batch<'a> = arca_store_core::OneByOne<'a, Self>;

    fn add_batch(&self) -> Self::Batch<'_> {
        arca_store_core::OneByOne::new(self)
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreOpError> {
        Ok(*path == self.path)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreOpError> {
        Ok((*path == self.path)
            .then(|| PathInfo::new(path.clone(), Hash::digest(HashAlgo::Sha256, b""), 8)))
    }

    fn query_referrers(&self, _: &StorePath) -> Result<BTreeSet<StorePath>, StoreOpError> {
        Ok(BTreeSet::new())
    }

    fn query_valid_derivers(&self, _: &StorePath) -> Result<BTreeSet<StorePath>, StoreOpError> {
        Ok(BTreeSet::new())
    }

    fn query_derivation_outputs(
        &self,
        _: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreOpError> {
        Ok(BTreeMap::new())
    }

    fn query_path_from_hash_part(&self, _: &str) -> Result<Option<StorePath>, StoreOpError> {
        Ok(None)
    }

    fn add_nar(&self, _: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreOpError> {
        drain(nar)
    }

    fn add_text(
        &self,
        name: &str,
        _: &[u8],
        _: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreOpError> {
        StorePath::from_base_name(&format!("{}-{name}", "1".repeat(32)))
            .map_err(|e| StoreOpError::new(e.to_string()))
    }

    fn nar_from_path(&self, _: &StorePath, out: &mut dyn Write) -> Result<(), StoreOpError> {
        out.write_all(b"nar")
            .map_err(|e| StoreOpError::new(e.to_string()))
    }
}

fn drain(input: &mut dyn Read) -> Result<(), StoreOpError> {
    io::copy(input, &mut io::sink())
        .map(drop)
        .map_err(|e| StoreOpError::new(e.to_string()))
}

impl StoreOps for OnePathStore {
    fn add_dump(
        &self,
        name: &str,
        _: arca_store_core::AddressingMethod,
        _: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        drain(dump)?;
        self.add_text(name, b"", &BTreeSet::new())
    }

    fn add_nar_checked(
        &self,
        _: &PathInfo,
        nar: &mut dyn BufRead,
        _: bool,
    ) -> Result<(), StoreOpError> {
        drain(nar)
    }
}

/// Serves `data` as one client's whole stream; the first byte picks trusted or not.
pub fn fuzz_daemon_requests(data: &[u8]) {
    let store = OnePathStore::new();
    let trusted = data.first().is_some_and(|b| b & 1 == 1);
    let limits = Limits {
        max_string: 1 << 16,
        max_list: 1 << 10,
        max_frame: 1 << 16,
    };
    let _ = serve(
        &store,
        data,
        io::sink(),
        Peer { trusted },
        limits,
        &Default::default(),
    );
}

/// Serves `data` as one serve-protocol client's whole stream (`arca serve`); the first
/// byte picks `--write` or not. Every input ends the connection cleanly or with an
/// error, never a panic or an allocation past the limits.
pub fn fuzz_serve_requests(data: &[u8]) {
    use arca_daemon_proto::serve_protocol::{serve_legacy, ServeOptions};
    let store = OnePathStore::new();
    let (write, stream) = match data.split_first() {
        Some((first, rest)) => (first & 1 == 1, rest),
        None => (false, data),
    };
    let options = ServeOptions {
        write,
        limits: Limits {
            max_string: 1 << 16,
            max_list: 1 << 10,
            max_frame: 1 << 16,
        },
        settings: Default::default(),
    };
    let _ = serve_legacy(&store, stream, io::sink(), &mut io::sink(), &options);
}

/// Feeds `data` to an `ssh://` store client ([`arca_daemon_proto::ServeClient`]) as
/// everything its server says: the greeting, then the replies to a path info query, a
/// validity query, a closure query, a NAR dump and a build. Whatever it says, each
/// request ends in a value or an error, never a panic or an allocation past the limits.
pub fn fuzz_serve_replies(data: &[u8]) {
    use arca_daemon_proto::ServeClient;
    use arca_store_core::derivation::{Derivation, DerivationOutput, OutputName};
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(data.to_vec()));
    let Ok(client) =
        ServeClient::handshake(reader, Box::new(io::sink()), StoreDir::default(), "fuzz")
    else {
        return;
    };
    let one = OnePathStore::new().path;
    let paths = BTreeSet::from([one.clone()]);
    let _ = client.query_path_infos(&paths);
    let _ = client.query_valid_paths(&paths);
    let _ = client.closure_graph(&paths, true);
    let _ = client.nar_from_path(&one, &mut io::sink());
    let drv_path = StorePath::from_base_name("00000000000000000000000000000000-x.drv")
        .expect("a valid base name");
    let mut outputs = BTreeMap::new();
    if let Ok(name) = OutputName::new("out") {
        outputs.insert(name, DerivationOutput::InputAddressed { path: one });
    }
    let drv = Derivation {
        name: "x".to_owned(),
        outputs,
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        system: "x86_64-linux".to_owned(),
        builder: "/bin/sh".to_owned(),
        args: Vec::new(),
        env: BTreeMap::new(),
    };
    let _ = client.build_derivation(
        &drv_path,
        &drv,
        arca_store_core::BuildMode::Normal,
        &Default::default(),
        &mut |_| {},
    );
}
