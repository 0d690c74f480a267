"""io.replacing: the one write-then-rename every writer of the suite goes through."""

import pytest

from transfer_eval import io


def test_a_file_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "out.npz"
    with io.replacing(target, ".npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".part.npz") and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with io.replacing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk trouble")
    assert target.read_bytes() == b"new"  # the old file stands, and no temporary is left
    assert [p.name for p in target.parent.iterdir()] == ["out.npz"]
    io.write_text(tmp_path / "t.txt", "a\r\nb")
    assert (tmp_path / "t.txt").read_bytes() == b"a\r\nb"  # written as given
