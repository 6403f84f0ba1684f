import pytest

from ecgrisk.files import atomic_path, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    atomic_write_text(tmp_path / "sub" / "new.txt", "new")  # parents are created
    assert (tmp_path / "sub" / "new.txt").read_text() == "new"


def test_file_sha256_matches_hashlib_on_a_file_larger_than_one_block(tmp_path):
    import hashlib

    from ecgrisk.files import file_sha256

    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB block
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()


def test_progress_bars_go_to_stderr_and_leave_stdout_to_results(capsys):
    from ecgrisk.progress import progress_bar

    with progress_bar(3, "caching tiny") as tick:
        for _ in range(3):
            tick()
    out, err = capsys.readouterr()
    assert out == "" and "caching tiny" in err and "3/3" in err
