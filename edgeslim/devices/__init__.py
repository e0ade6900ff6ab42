"""Hardware targets and the profiler."""
