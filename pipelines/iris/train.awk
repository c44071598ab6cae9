# Nearest-centroid classifier: per-class feature means, shrunk toward the global mean.
BEGIN { FS = "," }
NR == 1 { next }
{ n[$5]++; total++; for (f = 1; f <= 4; f++) { s[$5, f] += $f; g[f] += $f } }
END {
  for (c in n) {
    line = c
    for (f = 1; f <= 4; f++) line = line "," ((1 - shrink) * s[c, f] / n[c] + shrink * g[f] / total)
    print line
  }
}
