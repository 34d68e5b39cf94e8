"""The benchmark scripts. A regular package, not a namespace folder: a namespace portion loses to any package
named `benchmarks` installed in site-packages (some wheels ship one), and the GPU image is not ours to check."""
