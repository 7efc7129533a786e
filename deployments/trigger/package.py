"""Build the trigger's deployment package: a reproducible zip of ``scanflow_trigger/``.

    python deployments/trigger/package.py [--out deployments/trigger/build/scanflow-trigger.zip]

The package has no third-party dependency, so the zip holds only our modules; entries are
sorted and time-stamped 1980-01-01 so the same source gives the same bytes (and the same
CodeSha256 in Lambda). Prints the zip's path, size and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "scanflow_trigger"
DEFAULT_OUT = HERE / "build" / "scanflow-trigger.zip"
EPOCH = (1980, 1, 1, 0, 0, 0)


def build_zip(out: Path = DEFAULT_OUT) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in SOURCE.rglob("*.py") if "__pycache__" not in p.parts)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(HERE)), date_time=EPOCH)
            info.external_attr = 0o644 << 16  # readable by the Lambda runtime's user
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    out = build_zip(args.out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}  {out.stat().st_size} bytes  sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
