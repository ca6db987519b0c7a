# Sourced by the image scripts: apt_mirror SUITE prints the Debian mirror
# apt uses for SUITE (deb822 or one-line sources), so a build reaches what
# this machine reaches; nothing when apt names none.
apt_mirror() {
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" }
      { u = ""; ok = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, w, " "); u = w[2] }
          if ($i ~ /^Suites:/) { n = split($i, w, " "); for (j = 2; j <= n; j++) if (w[j] == s) ok = 1 }
        }
        if (ok && u != "") { print u; exit } }' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk -v s="$suite" '{ gsub(/\[[^]]*\]/, "") } $1 == "deb" && $3 == s { print $2 }'
}
