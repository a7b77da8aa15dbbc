"""edgetl benchmarks: speed and accuracy reports, measured as ratios within one run."""
