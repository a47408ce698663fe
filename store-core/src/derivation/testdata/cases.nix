let
  mk = attrs: derivation ({ system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
  h256 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  fixedR = mk { name = "fixed-rec"; outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = h256; };
  fixedR2 = mk { name = "fixed-rec"; outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = h256; args = ["other"]; };
  flat1 = mk { name = "flat-sha1"; outputHashAlgo = "sha1"; outputHash = "0000000000000000000000000000000000000000"; };
  flatMd5 = mk { name = "flat-md5"; outputHashAlgo = "md5"; outputHash = "d41d8cd98f00b204e9800998ecf8427e"; };
  recSha512 = mk { name = "rec-sha512"; outputHashMode = "recursive"; outputHashAlgo = "sha512"; outputHash = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"; };
  recSha1 = mk { name = "rec-sha1"; outputHashMode = "recursive"; outputHashAlgo = "sha1"; outputHash = "0000000000000000000000000000000000000000"; };
  flat256 = mk { name = "flat-sha256"; outputHash = "sha256-47DEQpj8HBSa+/TWmkXIwDdiomJM3WTjnH/DvQZ3LkU="; outputHashAlgo = "sha256"; };
  multi = mk { name = "multi"; outputs = ["out" "dev" "lib" "man"]; args = ["-c" "echo \"hi\"\n\t\\ \r x $out"]; };
  esc = mk { name = "escapes"; v = builtins.fromJSON "\"a\\b\\f\\u0001\\u001f\\u007f é ü 日本 \\\\ \\\" / \\n\\r\\t\""; empty = ""; "weird key" = "x"; };
  txt = builtins.toFile "hello.txt" "hello world\n";
  withSrc = mk { name = "with-src"; src = ./cases.nix; t = txt; };
  dep1 = mk { name = "dep1"; deps = [ multi.dev multi.lib fixedR flat1 ]; };
  merged = mk { name = "merged"; a = fixedR; b = fixedR2; };
  chain0 = mk { name = "chain0"; };
  chain1 = mk { name = "chain1"; p = chain0; };
  chain2 = mk { name = "chain2"; p = chain1; q = multi.man; };
  fixedDeps = mk { name = "fixed-with-deps"; outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = h256; d = chain2; };
  top = mk { name = "top-1.0.2_x+y=w.?"; inputs = [ dep1 merged withSrc chain2 fixedDeps esc recSha512 recSha1 flatMd5 flat256 ]; outputs = ["bin" "out"]; };
  structured = mk { name = "structured"; __structuredAttrs = true; list = [1 2 "x"]; nested = { a = 1; }; dep = chain1; };
  ignoreNulls = mk { name = "nulls"; __ignoreNulls = true; n = null; x = 1; b = true; f = false; fl = 1.5; l = ["a" "b" 3]; };
in { inherit fixedR fixedR2 flat1 flatMd5 recSha512 recSha1 flat256 multi esc withSrc dep1 merged chain0 chain1 chain2 fixedDeps top structured ignoreNulls; }
