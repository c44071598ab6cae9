# Deterministic hold-out split: row i goes to validation when (i * 37) mod 100 < 100 * holdout.
NR == 1 { print > "train.csv"; print > "validation.csv"; next }
{ if (((NR - 1) * 37) % 100 < 100 * holdout) print > "validation.csv"; else print > "train.csv" }
