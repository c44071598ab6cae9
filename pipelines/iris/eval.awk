# Top-1 accuracy of the centroids (first file) on the validation split (second file).
BEGIN { FS = "," }
FNR == NR { k++; cls[k] = $1; for (f = 1; f <= 4; f++) mu[k, f] = $(f + 1); next }
FNR == 1 { next }
{
  best = -1
  for (i = 1; i <= k; i++) {
    d = 0
    for (f = 1; f <= 4; f++) d += ($f - mu[i, f]) ^ 2
    if (best < 0 || d < best) { best = d; pred = cls[i] }
  }
  seen++; if (pred == $5) right++
}
END { printf "{\"top1\": %.4f, \"validation_images\": %d}\n", right / seen, seen > "metrics.json" }
