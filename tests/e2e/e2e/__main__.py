"""python3 -m e2e rootfs|prune (from tests/e2e).

rootfs: build, restore or reuse the cached rootfs (RootfsJob runs this in the
background). Its children stay in its process group, so ending that one group
(RootfsJob.stop) ends debootstrap and everything it started.
prune: delete cached rootfs dirs and tarballs of other keys.
"""

import sys

from . import base, rootfs


def main(argv):
    if argv not in (["rootfs"], ["prune"]):
        sys.stderr.write(__doc__)
        return 2
    base.OWN_GROUPS = False
    base.install_signal_handlers()
    try:
        rootfs.ensure() if argv == ["rootfs"] else rootfs.prune()
    except base.CaseFailed as e:
        base.log(str(e))
        return 1
    except base.Interrupted as e:
        base.log(f"rootfs: interrupted by {e}")
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
