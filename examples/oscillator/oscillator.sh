#!/bin/sh
# The damped oscillator of oscillator.py as an external program (POSIX sh + awk), following the
# protocol of alfi_tf/simulators/command.py:
#   oscillator.sh PARAMETERS_CSV OUTPUT_CSV NUM_OBS SEED
# PARAMETERS_CSV has a header (damping,frequency) and one row per parameter vector; OUTPUT_CSV gets
# NUM_OBS rows of 8 noisy positions per parameter vector, in order.
set -eu
awk -F, -v num_obs="$3" -v seed="$4" -v noise_std=0.1 '
  BEGIN { srand(seed % 2147483647); pi = 3.141592653589793 }
  NR == 1 { next }                                   # the header
  {
    for (obs = 0; obs < num_obs; obs++) {
      line = ""
      for (i = 0; i < 8; i++) {
        t = 0.25 + i * (4.0 - 0.25) / 7
        gauss = sqrt(-2 * log(1 - rand())) * cos(2 * pi * rand())   # Box-Muller
        x = exp(-$1 * t) * cos($2 * t) + noise_std * gauss
        line = line (i ? "," : "") sprintf("%.6g", x)
      }
      print line
    }
  }' "$1" > "$2"
