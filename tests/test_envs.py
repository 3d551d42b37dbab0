"""fastsac.envs: MuJoCo's warnings (the built-in PointMass task is tested in test_train.py)."""

import pytest

from fastsac.envs import make_env


def test_mujoco_warnings_go_to_stderr_once_each_and_no_log_file(tmp_path, monkeypatch, capsys):
    mujoco = pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
    monkeypatch.chdir(tmp_path)
    previous = mujoco.get_mju_user_warning()
    if previous is not None:
        mujoco.set_mju_user_warning(None)  # another test's handler: make_env installs its own
    try:
        make_env("HalfCheetah-v5").close()
        handler = mujoco.get_mju_user_warning()
        assert handler is not None
        for msg in ("fastsac test warning A", "fastsac test warning B", "fastsac test warning A"):
            handler(msg)
        err = capsys.readouterr().err
        assert err.count("fastsac test warning A") == 1
        assert err.count("fastsac test warning B") == 1
        make_env("HalfCheetah-v5").close()  # a second model load repeats no load warning
        assert capsys.readouterr().err == ""
        assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    finally:
        mujoco.set_mju_user_warning(previous)
