"""Atomic writes honour the umask (a temporary file is 0600 until renamed) and keep an existing
file's mode (issue 20)."""

from __future__ import annotations

import os
import stat

from tfcompress._io import write_bytes_atomic, write_text_atomic


def test_new_files_get_the_umask_and_existing_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "model.tflite", b"abc")
        assert stat.S_IMODE((tmp_path / "model.tflite").stat().st_mode) == 0o640
        os.umask(0o002)
        write_text_atomic(tmp_path / "report.json", "{}")
        assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o664
        os.chmod(tmp_path / "model.tflite", 0o600)
        write_bytes_atomic(tmp_path / "model.tflite", b"new")
        assert stat.S_IMODE((tmp_path / "model.tflite").stat().st_mode) == 0o600
        assert (tmp_path / "model.tflite").read_bytes() == b"new"
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        os.umask(previous)
