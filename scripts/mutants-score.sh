#!/usr/bin/env bash
# make mutants' table: per file, the mutants caught, missed and timed out (a timeout counts as
# a survivor), over both passes. Pass 1's lists are in OUT.old (renamed by `--iterate`); pass 2
# lists what pass 1 caught, and the unviable, in previously_caught.txt, and its own in caught.txt.
set -euo pipefail
out=${1:-mutants.out}
list() { cat "$@" 2>/dev/null | cut -d: -f1; }
{
  list "$out.old/unviable.txt" | sed 's/$/ unviable/'
  # Caught in either pass: everything pass 2 skipped or caught, less the unviable.
  comm -23 <(cat "$out/previously_caught.txt" "$out/caught.txt" | sort -u) <(sort -u "$out.old/unviable.txt") | cut -d: -f1 | sed 's/$/ caught/'
  list "$out/missed.txt" | sed 's/$/ missed/'
  list "$out/timeout.txt" | sed 's/$/ timeout/'
} | awk '
  { n[$1, $2]++; files[$1] = 1; total[$2]++ }
  END {
    printf "%-28s %7s %7s %7s %9s %9s\n", "file", "caught", "missed", "timeout", "unviable", "survived"
    for (f in files) {
      viable = n[f, "caught"] + n[f, "missed"] + n[f, "timeout"]
      printf "%-28s %7d %7d %7d %9d %8.1f%%\n", f, n[f, "caught"], n[f, "missed"], n[f, "timeout"], n[f, "unviable"], viable ? 100 * (n[f, "missed"] + n[f, "timeout"]) / viable : 0
    }
    viable = total["caught"] + total["missed"] + total["timeout"]
    printf "%-28s %7d %7d %7d %9d %8.1f%%   (target: at most 2%% survive)\n", "all", total["caught"], total["missed"], total["timeout"], total["unviable"], viable ? 100 * (total["missed"] + total["timeout"]) / viable : 0
  }'
