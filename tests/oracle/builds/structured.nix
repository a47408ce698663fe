# Structured attributes (`__structuredAttrs = true`) for `tests/tests/build_interop.rs`:
# the builder copies `.attrs.json` and `.attrs.sh` and dumps its environment (without the
# NIX_ATTRS_*_FILE variables, which Nix 2.8 sets to a host path, see build/src/environment.rs)
# into its output, so that Arca and Nix must write byte-identical files to get one NAR hash.
# `outputChecks` holds the reference checks of structured derivations. `passAsFile` (for
# derivations without structured attributes) moves variables into files.
{ bb }:
let
  bbPath = builtins.path { path = bb; name = "bb"; };
in
{
  structured = derivation {
    name = "structured";
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    __structuredAttrs = true;
    args = [ "sh" "-c" ''
      o=$(sed -n 's/.*"out":"\([^"]*\)".*/\1/p' .attrs.json)
      mkdir -p $o
      cp .attrs.json .attrs.sh $o/
      env | grep -v NIX_ATTRS_ | sort > $o/env
      ls -a > $o/listing
    '' ];
    PATH = "${bbPath}";
    str = "hello world";
    num = 42;
    flt = 1.5;
    yes = true;
    no = false;
    nul = null;
    list = [ "a" "b c" 3 ];
    nested = { x = 1; y = "z"; };
    deep = { a = { b = 1; }; };
    "bad-name" = "v";
    quote = "it's \"q\" $x `y`";
    unicode = "héllo ✓";
    outputChecks.out.allowedReferences = [ "out" bbPath ];
    outputChecks.out.disallowedReferences = [ ];
  };

  # The same output checked against `allowedReferences = [ ]`: both refuse it.
  forbidden = derivation {
    name = "structured-forbidden";
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    __structuredAttrs = true;
    args = [ "sh" "-c" ''
      o=$(sed -n 's/.*"out":"\([^"]*\)".*/\1/p' .attrs.json)
      echo "$o ${bbPath}" > $o
    '' ];
    outputChecks.out.allowedReferences = [ ];
  };

  passAsFile = derivation {
    name = "pass-as-file";
    system = "x86_64-linux";
    builder = "${bbPath}/busybox";
    args = [ "sh" "-c" ''
      mkdir $out
      cp "$bigPath" $out/big
      echo "$bigPath" > $out/big-path
      ls -a > $out/listing
      env | sort > $out/env
    '' ];
    PATH = "${bbPath}";
    passAsFile = [ "big" ];
    big = "a value\nover two lines";
    small = "stays a variable";
  };
}
