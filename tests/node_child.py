"""A Node in a child process for the crash tests: ``python -m node_child ROOT FLAG``.

Analysis = node_testkit.write_fake_outputs, blocking until FLAG exists, appending one line to
ROOT/completed.log when it has written its outputs. Writes the listening port to ROOT/port.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from node.app import Node
from node_testkit import FakeVolumeError, make_settings, write_fake_outputs


def main() -> None:
    root, flag = Path(sys.argv[1]), Path(sys.argv[2])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def analyze(paths, out_dir, settings, *, revision=1, predecessor_sr=None, earlier_scans=None):
        out = write_fake_outputs(paths, Path(out_dir), revision, predecessor_sr, block_on=flag)
        with open(root / "completed.log", "a") as log:
            log.write(f"{revision}\n")
        return out

    # quiet period long enough that a loaded machine does not split one send into two jobs
    node = Node(make_settings(root, series={"quiet_period_s": 1.5}), analyze=analyze, bad_input_errors=(FakeVolumeError,))
    node.start()
    tmp = root / "port.tmp"
    tmp.write_text(str(node.port))
    tmp.replace(root / "port")
    node.run_forever()


if __name__ == "__main__":
    main()
