//! Constants of Nix's worker protocol: magic numbers, versions, log message codes and
//! operation numbers (`worker-protocol.hh`).

/// The client's first word.
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// The server's first word.
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// A protocol version: major in the high byte, minor in the low one.
pub const fn version(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

/// The minor part of a version.
pub const fn minor(version: u64) -> u64 {
    version & 0xff
}

/// The oldest version served: what Nix 2.3 speaks.
pub const MIN_VERSION: u64 = version(1, 21);
/// The newest version served: what Nix 2.24 and later speak (1.35 adds the trusted
/// flag to the handshake, 1.37 CPU times to build results, 1.38 an exchange of feature
/// names right after the versions, in which Arca offers none).
pub const MAX_VERSION: u64 = version(1, 38);

/// Log channel codes the server sends while an operation runs.
pub mod stderr {
    pub const WRITE: u64 = 0x6461_7416;
    pub const READ: u64 = 0x6461_7461;
    pub const ERROR: u64 = 0x6378_7470;
    pub const NEXT: u64 = 0x6f6c_6d67;
    pub const START_ACTIVITY: u64 = 0x5354_5254;
    pub const STOP_ACTIVITY: u64 = 0x5354_4f50;
    pub const RESULT: u64 = 0x5253_4c54;
    pub const LAST: u64 = 0x616c_7473;
}

macro_rules! ops {
    ($($name:ident = $number:literal,)*) => {
        /// A worker operation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op {
            $($name = $number,)*
        }

        impl Op {
            /// The operation numbered `number`, if there is one.
            pub fn from_number(number: u64) -> Option<Op> {
                match number {
                    $($number => Some(Op::$name),)*
                    _ => None,
                }
            }
        }
    };
}

ops! {
    IsValidPath = 1,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGc = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
    // Arca's own: sent only to a daemon whose version string starts with "arca ".
    ArcaClosureGraph = 1000,
    ArcaReadLog = 1001,
}

/// `GCOptions::GCAction` on the wire.
pub mod gc_action {
    pub const RETURN_LIVE: u64 = 0;
    pub const RETURN_DEAD: u64 = 1;
    pub const DELETE_DEAD: u64 = 2;
    pub const DELETE_SPECIFIC: u64 = 3;
}

/// `BuildMode` on the wire.
pub mod build_mode {
    use arca_store_core::BuildMode;

    pub const NORMAL: u64 = 0;
    pub const REPAIR: u64 = 1;
    pub const CHECK: u64 = 2;

    /// `mode` as the protocol numbers it.
    pub fn of(mode: BuildMode) -> u64 {
        match mode {
            BuildMode::Normal => NORMAL,
            BuildMode::Repair => REPAIR,
            BuildMode::Check => CHECK,
        }
    }
}

/// `BuildResult::Status` values used here.
pub mod build_status {
    pub const BUILT: u64 = 0;
    pub const ALREADY_VALID: u64 = 2;
    pub const PERMANENT_FAILURE: u64 = 3;
    pub const MISC_FAILURE: u64 = 9;
}
