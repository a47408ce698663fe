# Escaping in the ATerm: quotes, backslashes, newlines, tabs, CR, `$`, unicode and
# other control characters (which the ATerm writer does not escape).
derivation {
  name = "strings";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [
    "-c"
    "echo \"$quoted\" > $out"
    "back\\slash"
    "new\nline"
    "tab\there"
    "cr\rhere"
    "dollar $HOME \${notinterpolated}"
    "unicode é 日本 🎉"
    ""
  ];
  quoted = "say \"hi\"";
  backslash = "a\\b\\\\c\\";
  newline = "line1\nline2\n";
  tab = "a\tb";
  cr = "a\r\nb\r";
  dollar = "$out $$ \${y} $\{z} end$";
  indented = ''
    first line
      indented "quotes" and \backslash
    ''${not interpolated} $HOME
  '';
  unicode = "é (U+00E9), é (decomposed), 日本, 🎉, ß";
  controls = builtins.fromJSON "\"soh:\\u0001 esc:\\u001b del:\\u007f bell:\\u0007 nbsp:\\u00a0\"";
  mixed = "\"\\\n\r\t$\\\"";
  "weird key" = "attribute names may contain spaces";
  "key=with=equals" = "v";
  "ünïcödé-key" = "v";
  empty = "";
}
