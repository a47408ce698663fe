//! A binary cache as a store, as Nix's `BinaryCacheStore` is one: `--store file://DIR`
//! (or `http(s)://…`, `s3://…`) opens a cache, and the commands that work on any store
//! work on it. Queries read `.narinfo` files (the path of a hash part too: the file is
//! named by it); a path's NAR is fetched, decompressed and checked against its
//! `.narinfo` as it is passed on (a `.drv` is read out of its NAR); adds (`add-path`, `add-file`, text, `import`, NARs
//! from a client) write the NAR, compressed as the URL says, then the `.narinfo`,
//! signed with the URL's `secret-key`; signatures are added by rewriting the
//! `.narinfo`; verification fetches and hashes NARs; build logs live under `log/`. What a cache has no word for (referrers,
//! derivers, builds, roots, garbage collection) is refused, naming the operation.
//!
//! Nothing is written before an add is checked: the NAR is read whole into the spool
//! file (compressed), parsed, hashed and measured on the way, and refused, with nothing
//! uploaded, if it is not the NAR its metadata gives or if the path refers to paths the
//! cache lacks (a cache whose closures are incomplete breaks every client that
//! substitutes from it). A path the cache has already is left as it is (its NAR is
//! still read, so a stream of several stays in step). Unlike `arca copy --to`, an add
//! writes no `.ls` listing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::PathBuf;

use arca_nar::{DumpOptions, NarEncoder, NarReader};
use arca_store_core::derivation::Derivation;
use arca_store_core::export;
use arca_store_core::ops::{
    AddProgress, ReadPathInfo, VerifyOptions, VerifyOutcome, VerifyProblem, VerifyReport,
};
use arca_store_core::path_info::{AddressingMethod, ContentAddress};
use arca_store_core::tee::TeeBufRead;
use arca_store_core::{
    ContentAddressMethod, DrvOutput, Hash, HashAlgo, NarDownload, OneByOne, PathInfo, Realisation,
    Signature, Store, StoreDir, StoreOpError, StoreOps, StorePath,
};

use crate::cache::{BinaryCache, CacheError, HashingWriter};

/// The longest text a text path may have (as the daemon's limit).
const MAX_TEXT: u64 = 64 << 20;

/// The largest `.drv` NAR read out of a cache (Nix's biggest derivations are a few MiB).
const MAX_DRV_NAR: u64 = 64 << 20;

impl Store for BinaryCache {
    type Error = CacheError;

    fn store_dir(&self) -> &StoreDir {
        BinaryCache::store_dir(self)
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, CacheError> {
        self.has(path)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, CacheError> {
        Ok(self.narinfo(path)?.map(|narinfo| narinfo.info))
    }

    fn query_referrers(&self, _path: &StorePath) -> Result<BTreeSet<StorePath>, CacheError> {
        Err(self.unsupported("querying referrers"))
    }

    fn query_valid_derivers(&self, _path: &StorePath) -> Result<BTreeSet<StorePath>, CacheError> {
        Err(self.unsupported("querying derivers"))
    }

    fn query_derivation_outputs(
        &self,
        _drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, CacheError> {
        Err(self.unsupported("querying the outputs of derivations"))
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, CacheError> {
        let valid = hash_part.len() == 32
            && hash_part
                .bytes()
                .all(|b| arca_store_core::base32::ALPHABET.contains(&b));
        if !valid {
            return Ok(None);
        }
        let narinfo = self.narinfo_at(&format!("{hash_part}.narinfo"))?;
        Ok(narinfo
            .map(|narinfo| narinfo.info.path)
            .filter(|path| path.hash_part() == hash_part))
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), CacheError> {
        self.add_checked(info, &mut BufReader::with_capacity(1 << 16, nar))
    }

    type Batch<'a> = OneByOne<'a, BinaryCache>;

    fn add_batch(&self) -> OneByOne<'_, BinaryCache> {
        OneByOne::new(self)
    }

    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, CacheError> {
        let hash = Hash::digest(HashAlgo::Sha256, contents);
        let path = self
            .store_dir()
            .make_text_path(name, &hash, references)
            .map_err(|source| bad_path(name, source))?;
        let mut encoder = NarEncoder::new(Vec::with_capacity(contents.len() + 128));
        encoder
            .regular(false, contents.len() as u64, &mut &contents[..])
            .and_then(|()| encoder.finish())
            .map_err(|error| self.io_error("serialise", &path, io::Error::other(error)))
            .and_then(|nar| {
                let mut info = PathInfo::new(
                    path.clone(),
                    Hash::digest(HashAlgo::Sha256, &nar),
                    nar.len() as u64,
                );
                info.references = references.clone();
                info.ca = Some(ContentAddress::Text(hash));
                self.add_checked(&info, &mut &nar[..])
            })?;
        Ok(path)
    }

    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), CacheError> {
        let display = self.store_dir().display(path);
        let narinfo = self
            .narinfo(path)?
            .ok_or_else(|| CacheError::InvalidPath(display.clone()))?;
        let mut nar = self.nar(&narinfo)?;
        let mut hashing = HashingWriter::new(out);
        copy(&mut nar, &mut hashing).map_err(|failed| match failed {
            Copy::Read(error) => self.io_error("download the NAR of", path, error),
            Copy::Write(error) => self.io_error("pass on the NAR of", path, error),
        })?;
        let (_, hash, size) = hashing.finish();
        check_nar(&display, &narinfo.info, &hash, size)
    }
}

impl StoreOps for BinaryCache {
    /// Looked up eight at a time.
    fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        let paths: Vec<&StorePath> = paths.iter().collect();
        let mut valid = BTreeSet::new();
        for (path, has) in paths
            .iter()
            .zip(crate::schedule::for_each(&paths, 8, |path| self.has(path)))
        {
            if has.map_err(StoreOpError::from_error)? {
                valid.insert((*path).clone());
            }
        }
        Ok(valid)
    }

    /// Every path with a `.narinfo`, where the backend can list its files (`file://`,
    /// `s3://`); refused over HTTP.
    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        let names = self
            .list_top()
            .map_err(StoreOpError::from_error)?
            .ok_or_else(|| StoreOpError::from_error(self.unsupported("listing all its paths")))?;
        let mut paths = BTreeSet::new();
        for name in names {
            let Some(hash_part) = name.strip_suffix(".narinfo") else {
                continue;
            };
            if let Some(path) = self
                .query_path_from_hash_part(hash_part)
                .map_err(StoreOpError::from_error)?
            {
                paths.insert(path);
            }
        }
        Ok(paths)
    }

    /// Each path (every path the cache lists, when `None`) must have a `.narinfo` and
    /// its NAR; with `check_contents`, the NAR is fetched, decompressed and hashed, and
    /// one that is not the `.narinfo`'s (or cannot be read whole) is reported modified.
    /// Nothing can be repaired in a cache: `repair` is refused.
    fn verify_store(
        &self,
        paths: Option<&BTreeSet<StorePath>>,
        options: VerifyOptions,
    ) -> Result<VerifyOutcome, StoreOpError> {
        if options.repair {
            return Err(StoreOpError::from_error(self.unsupported("repairing")));
        }
        let all;
        let paths = match paths {
            Some(paths) => paths,
            None => {
                all = self.query_all_valid_paths()?;
                &all
            }
        };
        let listed: Vec<&StorePath> = paths.iter().collect();
        let checked = crate::schedule::for_each(&listed, 4, |path| self.verify_one(path, options));
        let mut report = VerifyReport {
            checked: listed.len(),
            problems: Vec::new(),
        };
        for problem in checked {
            report
                .problems
                .extend(problem.map_err(StoreOpError::from_error)?);
        }
        Ok(VerifyOutcome::Report(report))
    }

    fn add_dump(
        &self,
        name: &str,
        method: AddressingMethod,
        references: &BTreeSet<StorePath>,
        dump: &mut dyn Read,
    ) -> Result<StorePath, StoreOpError> {
        match method {
            AddressingMethod::Text(algo) if algo != HashAlgo::Sha256 => Err(StoreOpError::new(
                format!("content address method '{method}' is not supported: text paths are hashed with sha256"),
            )),
            AddressingMethod::Text(_) => {
                let mut contents = Vec::new();
                dump.take(MAX_TEXT + 1)
                    .read_to_end(&mut contents)
                    .map_err(|error| StoreOpError::from_error(self.io_error_named("read", name, error)))?;
                if contents.len() as u64 > MAX_TEXT {
                    // The rest is drained, so that a stream it came on stays usable.
                    io::copy(dump, &mut io::sink())
                        .map_err(|error| StoreOpError::from_error(self.io_error_named("read", name, error)))?;
                    return Err(StoreOpError::from_error(CacheError::TooLarge {
                        name: name.to_owned(),
                        limit: MAX_TEXT,
                    }));
                }
                self.add_text(name, &contents, references).map_err(StoreOpError::from_error)
            }
            AddressingMethod::Fixed(..) if !references.is_empty() => Err(StoreOpError::new(
                "a fixed-output path cannot have references",
            )),
            AddressingMethod::Fixed(ContentAddressMethod::Flat, algo) => {
                self.add_flat(name, algo, dump).map_err(StoreOpError::from_error)
            }
            AddressingMethod::Fixed(ContentAddressMethod::Recursive, algo) => {
                let mut dump = BufReader::with_capacity(1 << 16, dump);
                self.add_recursive(name, algo, &mut dump).map_err(StoreOpError::from_error)
            }
        }
    }

    fn add_nar_checked(
        &self,
        info: &PathInfo,
        nar: &mut dyn BufRead,
        trusted: bool,
    ) -> Result<(), StoreOpError> {
        if !trusted && !info.is_content_addressed_correctly(self.store_dir()) {
            // Read all the same: the stream it came on stays in step.
            NarReader::new(nar, arca_nar::Limits::default())
                .read_to_end()
                .map_err(StoreOpError::from_error)?;
            return Err(StoreOpError::new(format!(
                "cannot add '{}' to '{}': it is not content-addressed and the client is not trusted",
                self.store_dir().display(&info.path),
                self.url()
            )));
        }
        self.add_checked(info, nar)
            .map_err(StoreOpError::from_error)
    }

    fn add_many_checked<E: From<StoreOpError>>(
        &self,
        stream: &mut dyn BufRead,
        count: u64,
        read_info: &mut ReadPathInfo<'_, E>,
    ) -> Result<(), E> {
        for _ in 0..count {
            let (info, trusted) = read_info(stream)?;
            self.add_nar_checked(&info, stream, trusted)?;
        }
        Ok(())
    }

    fn import_paths(&self, input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        let store_dir = self.store_dir().clone();
        let mut imported = Vec::new();
        while export::read_entry_start(input).map_err(StoreOpError::from_error)? {
            let spooled = self
                .spool_nar(input, "the export archive", None)
                .map_err(StoreOpError::from_error)?;
            let trailer =
                export::read_entry_trailer(input, &store_dir).map_err(StoreOpError::from_error)?;
            let mut info =
                PathInfo::new(trailer.path.clone(), spooled.nar_hash.clone(), spooled.size);
            info.references = trailer.references;
            info.deriver = trailer.deriver;
            let mut nar = spooled.reopen().map_err(StoreOpError::from_error)?;
            self.add_checked(&info, &mut nar)
                .map_err(StoreOpError::from_error)?;
            imported.push(trailer.path);
        }
        Ok(imported)
    }

    fn add_paths(
        &self,
        sources: &[(PathBuf, String)],
        _progress: &(dyn Fn(usize, AddProgress) + Sync),
    ) -> Result<Vec<StorePath>, StoreOpError> {
        let mut added = Vec::with_capacity(sources.len());
        for (source, name) in sources {
            let mut spool = self.spool().map_err(StoreOpError::from_error)?;
            let mut hashing = HashingWriter::new(&mut spool);
            arca_nar::dump_path(source, &mut hashing, &DumpOptions::default())
                .map_err(StoreOpError::from_error)?;
            let (_, nar_hash, size) = hashing.finish();
            let path = self
                .store_dir()
                .make_fixed_output_path(
                    name,
                    ContentAddressMethod::Recursive,
                    &nar_hash,
                    &BTreeSet::new(),
                    false,
                )
                .map_err(|source| StoreOpError::from_error(bad_path(name, source)))?;
            let mut info = PathInfo::new(path.clone(), nar_hash.clone(), size);
            info.ca = Some(ContentAddress::Fixed {
                method: ContentAddressMethod::Recursive,
                hash: nar_hash,
            });
            let spooled = Spooled {
                file: spool,
                nar_hash: info.nar_hash.clone(),
                size,
                ca_hash: info.nar_hash.clone(),
            };
            let mut nar = spooled.reopen().map_err(StoreOpError::from_error)?;
            self.add_checked(&info, &mut nar)
                .map_err(StoreOpError::from_error)?;
            added.push(path);
        }
        Ok(added)
    }

    fn add_signatures(
        &self,
        path: &StorePath,
        signatures: &[Signature],
    ) -> Result<(), StoreOpError> {
        let display = self.store_dir().display(path);
        let mut narinfo = self
            .narinfo(path)
            .map_err(StoreOpError::from_error)?
            .ok_or_else(|| StoreOpError::from_error(CacheError::InvalidPath(display)))?;
        let before = narinfo.info.signatures.len();
        narinfo
            .info
            .signatures
            .extend(signatures.iter().map(Signature::to_string));
        if narinfo.info.signatures.len() == before {
            return Ok(());
        }
        self.writable_or_refuse()
            .map_err(StoreOpError::from_error)?;
        // Racy as Nix's: a cache has no locks, and a writer in between loses.
        self.put_narinfo(&narinfo).map_err(StoreOpError::from_error)
    }

    fn query_nar_download(&self, path: &StorePath) -> Result<Option<NarDownload>, StoreOpError> {
        Ok(self
            .narinfo(path)
            .map_err(StoreOpError::from_error)?
            .map(|narinfo| NarDownload {
                url: narinfo.url,
                file_hash: narinfo.file_hash,
                file_size: narinfo.file_size,
            }))
    }

    /// Read out of its NAR (a single regular file, at most [`MAX_DRV_NAR`] bytes as its
    /// `.narinfo` says, checked against it).
    fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreOpError> {
        let display = self.store_dir().display(path);
        let not_a_drv = || StoreOpError::new(format!("'{display}' is not a derivation file"));
        let narinfo = self
            .narinfo(path)
            .map_err(StoreOpError::from_error)?
            .ok_or_else(|| StoreOpError::from_error(CacheError::InvalidPath(display.clone())))?;
        if narinfo.info.nar_size > MAX_DRV_NAR {
            return Err(not_a_drv());
        }
        let mut nar = Vec::with_capacity(narinfo.info.nar_size as usize);
        self.nar_from_path(path, &mut nar)
            .map_err(StoreOpError::from_error)?;
        let mut reader = NarReader::new(&nar[..], arca_nar::Limits::default());
        let mut text = Vec::new();
        match reader.next().map_err(StoreOpError::from_error)? {
            Some(arca_nar::Event::Regular { .. }) => {
                reader.contents().read_to_end(&mut text).map_err(|error| {
                    StoreOpError::from_error(self.io_error("read", path, error))
                })?;
            }
            _ => return Err(not_a_drv()),
        }
        Derivation::parse_drv_file(self.store_dir(), path, &text).map_err(StoreOpError::from_error)
    }

    fn query_realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, StoreOpError> {
        self.realisation(id).map_err(StoreOpError::from_error)
    }

    /// Written as Nix writes it; its output path must be in the cache already.
    fn register_realisation(&self, realisation: &Realisation) -> Result<(), StoreOpError> {
        self.writable_or_refuse()
            .map_err(StoreOpError::from_error)?;
        if !self
            .has(&realisation.out_path)
            .map_err(StoreOpError::from_error)?
        {
            return Err(StoreOpError::from_error(CacheError::MissingReferences {
                path: realisation.id.to_string(),
                cache: self.url().to_owned(),
                missing: vec![self.store_dir().display(&realisation.out_path)],
            }));
        }
        self.put_realisation(realisation)
            .map_err(StoreOpError::from_error)
    }

    fn read_build_log(&self, drv: &StorePath) -> Result<Option<Box<dyn Read>>, StoreOpError> {
        Ok(self
            .log(drv)
            .map_err(StoreOpError::from_error)?
            .map(|download| Box::new(download) as Box<dyn Read>))
    }

    fn add_build_log(&self, drv: &StorePath, text: &mut dyn Read) -> Result<(), StoreOpError> {
        self.writable_or_refuse()
            .map_err(StoreOpError::from_error)?;
        let mut spool = self.spool().map_err(StoreOpError::from_error)?;
        io::copy(text, &mut spool).map_err(|error| {
            StoreOpError::from_error(self.io_error("spool the build log of", drv, error))
        })?;
        self.put_log_file(drv, spool)
            .map_err(StoreOpError::from_error)
    }
}

impl BinaryCache {
    /// What is wrong with `path` in the cache, if anything (see
    /// [`StoreOps::verify_store`]).
    fn verify_one(
        &self,
        path: &StorePath,
        options: VerifyOptions,
    ) -> Result<Option<VerifyProblem>, CacheError> {
        let missing = VerifyProblem::Missing {
            path: path.clone(),
            repaired: false,
        };
        let Some(narinfo) = self.narinfo(path)? else {
            return Ok(Some(missing));
        };
        if !options.check_contents {
            return Ok(None);
        }
        let mut nar = match self.nar(&narinfo) {
            Ok(nar) => nar,
            Err(CacheError::NarMissing { .. }) => return Ok(Some(missing)),
            Err(error) => return Err(error),
        };
        let mut hashing = HashingWriter::new(io::sink());
        // A NAR that cannot be read whole (truncated, corrupt compression) is not the one
        // the `.narinfo` describes: what was read is hashed and compared.
        let _ = copy(&mut nar, &mut hashing);
        let (_, actual, size) = hashing.finish();
        if actual == narinfo.info.nar_hash && size == narinfo.info.nar_size {
            return Ok(None);
        }
        Ok(Some(VerifyProblem::Modified {
            path: path.clone(),
            expected: narinfo.info.nar_hash,
            actual,
            repaired: false,
        }))
    }

    fn unsupported(&self, operation: &'static str) -> CacheError {
        CacheError::Unsupported {
            operation,
            cache: self.url().to_owned(),
        }
    }

    fn writable_or_refuse(&self) -> Result<(), CacheError> {
        if self.writable() {
            Ok(())
        } else {
            Err(CacheError::ReadOnly(self.url().to_owned()))
        }
    }

    fn io_error(&self, action: &'static str, path: &StorePath, source: io::Error) -> CacheError {
        CacheError::Io {
            action,
            path: self.store_dir().display(path),
            source,
        }
    }

    fn io_error_named(&self, action: &'static str, name: &str, source: io::Error) -> CacheError {
        CacheError::Io {
            action,
            path: name.to_owned(),
            source,
        }
    }

    /// Adds `info`'s path from `nar` (see the module docs): the NAR read whole, checked,
    /// and uploaded only if it is the one `info` describes and every reference is there.
    fn add_checked(&self, info: &PathInfo, nar: &mut dyn BufRead) -> Result<(), CacheError> {
        let display = self.store_dir().display(&info.path);
        if self.has(&info.path)? {
            NarReader::new(nar, arca_nar::Limits::default())
                .read_to_end()
                .map_err(|source| CacheError::BadNar {
                    path: display,
                    source,
                })?;
            return Ok(());
        }
        self.writable_or_refuse()?;
        let others: Vec<&StorePath> = info
            .references
            .iter()
            .filter(|reference| **reference != info.path)
            .collect();
        self.upload(info, None, |out| {
            let mut hashing = HashingWriter::new(out);
            let size = {
                let mut nar = nar;
                let mut tee = TeeBufRead::new(&mut nar, &mut hashing);
                let read = NarReader::new(&mut tee, arca_nar::Limits::default()).read_to_end();
                if let Some(error) = tee.error.take() {
                    return Err(CacheError::Spool {
                        path: display.clone(),
                        source: error,
                    });
                }
                read.map_err(|source| CacheError::BadNar {
                    path: display.clone(),
                    source,
                })?
            };
            let (_, hash, _) = hashing.finish();
            check_nar(&display, info, &hash, size)?;
            let missing: Vec<String> = crate::schedule::for_each(&others, 8, |reference| {
                self.has(reference).map(|has| (!has).then_some(*reference))
            })
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .map(|reference| self.store_dir().display(reference))
            .collect();
            if !missing.is_empty() {
                return Err(CacheError::MissingReferences {
                    path: display.clone(),
                    cache: self.url().to_owned(),
                    missing,
                });
            }
            Ok(())
        })
    }

    /// A flat fixed-output path: the file's bytes spooled and hashed with `algo`, then
    /// added as the NAR of one regular file.
    fn add_flat(
        &self,
        name: &str,
        algo: HashAlgo,
        dump: &mut dyn Read,
    ) -> Result<StorePath, CacheError> {
        let mut file = self.spool()?;
        let mut hashing = HashingWriter::with_other(&mut file, Some(algo));
        copy(dump, &mut hashing).map_err(|failed| match failed {
            Copy::Read(error) => self.io_error_named("read", name, error),
            Copy::Write(error) => self.io_error_named("spool", name, error),
        })?;
        let (_, size, hash) = hashing.finish_with_other();
        let path = self
            .store_dir()
            .make_fixed_output_path(
                name,
                ContentAddressMethod::Flat,
                &hash,
                &BTreeSet::new(),
                false,
            )
            .map_err(|source| bad_path(name, source))?;
        file.rewind()
            .map_err(|error| self.io_error("read the spooled file of", &path, error))?;
        let mut nar_spool = self.spool()?;
        let mut hashing = HashingWriter::new(&mut nar_spool);
        let mut encoder = NarEncoder::new(&mut hashing);
        encoder
            .regular(false, size, &mut BufReader::new(file.as_file_mut()))
            .and_then(|()| encoder.finish().map(drop))
            .map_err(|error| self.io_error("serialise", &path, io::Error::other(error)))?;
        let (_, nar_hash, nar_size) = hashing.finish();
        let mut info = PathInfo::new(path.clone(), nar_hash.clone(), nar_size);
        info.ca = Some(ContentAddress::Fixed {
            method: ContentAddressMethod::Flat,
            hash,
        });
        let spooled = Spooled {
            file: nar_spool,
            ca_hash: nar_hash.clone(),
            nar_hash,
            size: nar_size,
        };
        self.add_checked(&info, &mut spooled.reopen()?)?;
        Ok(path)
    }

    /// A recursive fixed-output path from its NAR, hashed with `algo` for its address.
    fn add_recursive(
        &self,
        name: &str,
        algo: HashAlgo,
        dump: &mut dyn BufRead,
    ) -> Result<StorePath, CacheError> {
        let spooled = self.spool_nar(dump, name, Some(algo))?;
        let hash = spooled.ca_hash.clone();
        let path = self
            .store_dir()
            .make_fixed_output_path(
                name,
                ContentAddressMethod::Recursive,
                &hash,
                &BTreeSet::new(),
                false,
            )
            .map_err(|source| bad_path(name, source))?;
        let mut info = PathInfo::new(path.clone(), spooled.nar_hash.clone(), spooled.size);
        info.ca = Some(ContentAddress::Fixed {
            method: ContentAddressMethod::Recursive,
            hash,
        });
        self.add_checked(&info, &mut spooled.reopen()?)?;
        Ok(path)
    }

    /// Reads one NAR off `input` (exactly its bytes) into a spool file, checking it and
    /// hashing it (sha256, and with `algo` too when given) on the way.
    fn spool_nar(
        &self,
        input: &mut dyn BufRead,
        whence: &str,
        algo: Option<HashAlgo>,
    ) -> Result<Spooled, CacheError> {
        let mut file = self.spool()?;
        let mut hashing = HashingWriter::with_other(&mut file, algo);
        let read = {
            let mut input = input;
            let mut tee = TeeBufRead::new(&mut input, &mut hashing);
            let read = NarReader::new(&mut tee, arca_nar::Limits::default()).read_to_end();
            if let Some(error) = tee.error.take() {
                return Err(self.io_error_named("spool a NAR of", whence, error));
            }
            read
        };
        read.map_err(|source| CacheError::BadNar {
            path: whence.to_owned(),
            source,
        })?;
        let (nar_hash, size, ca_hash) = hashing.finish_with_other();
        Ok(Spooled {
            file,
            nar_hash,
            size,
            ca_hash,
        })
    }
}

/// A NAR in a spool file, with what was learnt reading it.
struct Spooled {
    file: tempfile::NamedTempFile,
    nar_hash: Hash,
    size: u64,
    /// Hashed with the algorithm asked for (sha256 by default).
    ca_hash: Hash,
}

impl Spooled {
    /// The NAR, read from its start.
    fn reopen(self) -> Result<BufReader<tempfile::NamedTempFile>, CacheError> {
        let mut file = self.file;
        file.rewind().map_err(|source| CacheError::Spool {
            path: "a spooled NAR".into(),
            source,
        })?;
        Ok(BufReader::with_capacity(1 << 16, file))
    }
}

/// Why [`copy`] stopped.
enum Copy {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `from` to `to` until `from` ends, saying which side failed.
fn copy(from: &mut dyn Read, to: &mut dyn Write) -> Result<(), Copy> {
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Copy::Read(error)),
        };
        to.write_all(&buffer[..read]).map_err(Copy::Write)?;
    }
}

/// Whether a NAR read has the hash and size `info` gives.
fn check_nar(path: &str, info: &PathInfo, hash: &Hash, size: u64) -> Result<(), CacheError> {
    if *hash == info.nar_hash && size == info.nar_size {
        return Ok(());
    }
    Err(CacheError::NarMismatch {
        path: path.to_owned(),
        hash: info.nar_hash.to_string(),
        size: info.nar_size,
        got_hash: hash.to_string(),
        got_size: size,
    })
}

fn bad_path(name: &str, source: arca_store_core::StorePathError) -> CacheError {
    CacheError::BadPath {
        name: name.to_owned(),
        source,
    }
}
