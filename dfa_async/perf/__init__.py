"""Speed: the benchmark harness (`bench`) and the per-op Ray-call baseline it measures against (`calls`)."""
