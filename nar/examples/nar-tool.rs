//! A minimal command line around the crate, for comparing with `nix-store` by hand and in
//! benchmarks: `nar-tool dump PATH > NAR`, `nar-tool restore DIR < NAR`,
//! `nar-tool validate < NAR`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dump", path] => raw_stdout().and_then(|mut out| {
            arca_nar::dump_path(Path::new(path), &mut out, &Default::default())
                .map(drop)
                .map_err(Into::into)
        }),
        ["restore", target] => {
            arca_nar::restore(io::stdin().lock(), Path::new(target), &Default::default())
                .map_err(Into::into)
        }
        ["validate"] => arca_nar::validate(io::stdin().lock(), &Default::default())
            .map(|size| println!("{size}"))
            .map_err(Into::into),
        _ => Err("usage: nar-tool dump PATH | restore DIR | validate".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Standard output as a plain file: `io::Stdout` is line-buffered, which would scan every
/// chunk of binary output for newlines.
fn raw_stdout() -> Result<File, Box<dyn std::error::Error>> {
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}
