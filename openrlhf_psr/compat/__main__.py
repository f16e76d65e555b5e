"""``python -m openrlhf_psr.compat [install-pth|uninstall-pth|status]``."""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

PTH_NAME = "openrlhf_psr_compat.pth"
PTH_LINE = "import openrlhf_psr.compat.autoload\n"


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_psr.compat", description=__doc__)
    parser.add_argument("action", choices=["install-pth", "uninstall-pth", "status"])
    args = parser.parse_args(argv)
    target = pth_path()
    if args.action == "install-pth":
        target.write_text(PTH_LINE)
        print(f"installed {target}")
    elif args.action == "uninstall-pth":
        target.unlink(missing_ok=True)
        print(f"removed {target}")
    else:
        from openrlhf_psr.compat import mode_from_env, status

        print(f"pth: {'present' if target.exists() else 'absent'} ({target}); mode: {mode_from_env()}")
        for name, state in status().items():
            print(f"  {name}: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
