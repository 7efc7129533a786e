"""The process-scan flow, its hooks, settings and the scanflow command line."""
