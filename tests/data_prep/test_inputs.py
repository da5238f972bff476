"""INPUT expansion: files, recursive folders, list files, missing paths."""

from __future__ import annotations

from pathlib import Path

from data_prep.inputs import InputItem, expand_inputs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_is_searched_recursively_for_video_extensions_in_sorted_order(tmp_path):
    b = _touch(tmp_path / "videos" / "b.mp4")
    a = _touch(tmp_path / "videos" / "sub" / "deeper" / "a.MOV")
    c = _touch(tmp_path / "videos" / "c.avi")
    _touch(tmp_path / "videos" / "notes.txt")
    _touch(tmp_path / "videos" / "b.json")
    _touch(tmp_path / "videos" / ".hidden" / "x.mp4")
    _touch(tmp_path / "videos" / ".partial.mp4")
    items = expand_inputs([tmp_path / "videos"])
    assert [i.path for i in items] == sorted([a, b, c])
    assert all(i.error is None for i in items)


def test_list_file_entries_are_relative_to_the_list_and_may_be_folders(tmp_path):
    v1 = _touch(tmp_path / "data" / "one.mp4")
    v2 = _touch(tmp_path / "data" / "more" / "two.mkv")
    lst = tmp_path / "data" / "inputs.txt"
    lst.write_text("# my videos\none.mp4\n\nmore\nmissing.mp4\n")
    items = expand_inputs([str(lst)])
    assert [i.path for i in items] == [v1, v2, tmp_path / "data" / "missing.mp4"]
    assert items[0].error is None and items[1].error is None
    assert "missing.mp4" in items[2].error


def test_missing_paths_become_error_items_and_other_files_are_kept_as_videos(tmp_path):
    pdf = _touch(tmp_path / "paper.pdf")
    items = expand_inputs([tmp_path / "nope.mp4", pdf])
    assert items[0] == InputItem(tmp_path / "nope.mp4", f"no such file or folder: {tmp_path / 'nope.mp4'}")
    # A file named explicitly is tried as a video; decoding decides (and reports) if it is one.
    assert items[1] == InputItem(pdf)


def test_the_same_file_given_twice_is_processed_once_and_extra_paths_come_last(tmp_path):
    v = _touch(tmp_path / "a.mp4")
    w = _touch(tmp_path / "b.mp4")
    items = expand_inputs([v, tmp_path, str(v)], extra=[w])
    assert [i.path for i in items] == [v, w]
