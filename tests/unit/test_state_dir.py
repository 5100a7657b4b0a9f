"""The state dir and the journal stay private: no symlinks followed, no other user's directory, 0700/0600."""

from __future__ import annotations

import os
import stat

import pytest

from controller.state_dir import StateDirError, prepare_state_dir, private_file

NOBODY = 65534


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)  # what a shell usually has: files are born 0644 unless we say otherwise
    yield
    os.umask(old)


def test_a_new_state_dir_is_created_0700(tmp_path):
    prepare_state_dir(tmp_path / "a" / "state")
    assert mode(tmp_path / "a" / "state") == 0o700


def test_an_open_state_dir_is_closed_to_others(tmp_path):
    (tmp_path / "state").mkdir(mode=0o755)
    prepare_state_dir(tmp_path / "state")
    assert mode(tmp_path / "state") == 0o700


def test_a_symlinked_state_dir_is_refused_and_its_target_left_as_it_was(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (tmp_path / "state").symlink_to(target)
    with pytest.raises(StateDirError, match=rf"state dir {tmp_path / 'state'}: is a symlink"):
        prepare_state_dir(tmp_path / "state")
    assert mode(target) == 0o755  # never chmod-ed through the link


def test_a_dangling_symlink_state_dir_is_refused(tmp_path):
    (tmp_path / "state").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StateDirError, match="is a symlink"):
        prepare_state_dir(tmp_path / "state")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",  # CI runs it (as root), never skips
                    reason="making a directory another user owns needs root")
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path):
    (tmp_path / "state").mkdir(mode=0o755)
    os.chown(tmp_path / "state", NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=rf"state dir {tmp_path / 'state'}: owned by uid {NOBODY}"):
        prepare_state_dir(tmp_path / "state")
    assert mode(tmp_path / "state") == 0o755


def test_a_file_where_the_state_dir_should_be_is_refused(tmp_path):
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirError, match="is not a directory"):
        prepare_state_dir(tmp_path / "state")


def test_private_file_refuses_what_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StateDirError, match="is not a regular file"):
        private_file(tmp_path / "fifo")
