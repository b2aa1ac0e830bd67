"""2D U-Nets of the reference papers (DART20 residual, DSA residual, vanilla) and their layer groups."""
