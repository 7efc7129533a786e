"""One Prefect task per stage of process-scan; each resolves its I/O and calls ``cv``."""
