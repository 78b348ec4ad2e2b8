"""Large-scale benchmarks: 1M-track indexes, throughput against native reads."""
