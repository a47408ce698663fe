//! `builtin:fetchurl` through `arca daemon`, driven by real Nix's `import <nix/fetchurl.nix>`:
//! a `file://` URL and an `http://` one on 127.0.0.1 give the path real Nix gives, with the
//! file's bytes; a file not every user may read is refused; a wrong hash fails. Needs
//! root, `unshare` and real Nix (see `arca_tests::lab`); skipped loudly without them.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use arca_tests::lab::{expect_success, prerequisites, stderr_of, Lab, NsDaemon};

const CONTENT: &[u8] = b"fetched by builtin:fetchurl\n";

/// Serves `CONTENT` for every request on 127.0.0.1 (a thread for the test's life);
/// returns the port.
fn serve_content() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            // The request line and headers, up to the empty line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                CONTENT.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(CONTENT);
        }
    });
    port
}

/// `nix-build` of `import <nix/fetchurl.nix>` with `url`, `sha256` the file's hash.
fn fetch_args(url: &str, sha256: &str) -> Vec<String> {
    [
        "--expr",
        "import <nix/fetchurl.nix>",
        "--argstr",
        "url",
        url,
        "--argstr",
        "sha256",
        sha256,
        "--no-out-link",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn fetchurl_fetches_files_and_http_as_real_nix_does() {
    let test = "fetchurl_fetches_files_and_http_as_real_nix_does";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\nbuild-users-group =\n"));
    let source = lab.write("source.txt", std::str::from_utf8(CONTENT).unwrap());
    fs::set_permissions(&source, fs::Permissions::from_mode(0o644)).unwrap();
    let sha256 = {
        let out = lab.local(
            "nix-hash",
            &["--flat", "--type", "sha256", source.to_str().unwrap()],
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let daemon = NsDaemon::start(&lab, &[]);

    let file_url = format!("file://{}", source.display());
    let args = fetch_args(&file_url, &sha256);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let by_file = lab.run_ok(&daemon, "nix-build", &args);
    assert_eq!(fs::read(lab.physical(&by_file)).unwrap(), CONTENT);

    // Over HTTP, after the first output is gone: the same path, fetched again.
    let deleted = lab.run("nix-store", None, &["--delete", &by_file]);
    expect_success(&daemon, "nix-store", &["--delete"], &deleted);
    let http_url = format!("http://127.0.0.1:{}/source.txt", serve_content());
    let args = fetch_args(&http_url, &sha256);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let by_http = lab.run_ok(&daemon, "nix-build", &args);
    assert_eq!(by_http, by_file, "the path follows from the hash alone");
    assert_eq!(fs::read(lab.physical(&by_http)).unwrap(), CONTENT);

    // What real Nix makes of the same expression (building locally, file:// URL).
    let reference = Lab::new(Some("sandbox = false\nbuild-users-group =\n"));
    let args = fetch_args(&file_url, &sha256);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nix = reference.local("nix-build", &args);
    assert!(nix.status.success(), "real Nix: {}", stderr_of(&nix));
    assert_eq!(String::from_utf8(nix.stdout).unwrap().trim(), by_file);
}

#[test]
fn fetchurl_refuses_what_not_every_user_may_read_and_wrong_hashes() {
    let test = "fetchurl_refuses_what_not_every_user_may_read_and_wrong_hashes";
    if !prerequisites(test) {
        return;
    }
    let lab = Lab::new(Some("sandbox = false\nbuild-users-group =\n"));
    let secret = lab.write("secret.txt", "not for builds\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let _daemon = NsDaemon::start(&lab, &[]);
    let zero = "0".repeat(64);
    let args = fetch_args(&format!("file://{}", secret.display()), &zero);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = lab.run("nix-build", None, &args);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("refusing to read"), "{stderr}");

    let public = lab.write("public.txt", "anyone may read this\n");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).unwrap();
    let args = fetch_args(&format!("file://{}", public.display()), &zero);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = lab.run("nix-build", None, &args);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("hash mismatch"), "{stderr}");
}
