"""The demo's other names, as the seed's instructions start it: ``python mineworld.py`` and
``python -m mineworld``, beside the ``mineworld`` package that ``import mineworld`` must still
find."""

import subprocess
import sys
from pathlib import Path

import pytest

import mineworld

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "assets"


def test_import_mineworld_is_the_package():
    assert Path(mineworld.__file__) == ROOT / "mineworld" / "__init__.py"


@pytest.mark.parametrize("command", [["app.py", "--help"], ["app.py", "--port", "http"],
                                     ["mineworld.py", "--help"], ["-m", "mineworld", "--help"],
                                     ["inference.py", "--help"]],
                         ids=["app.py", "bad-flag", "mineworld.py", "-m mineworld", "inference.py"])
def test_help_and_bad_flags_answer_before_torch_and_gradio_load(command):
    """The flags come from the strategies' declarations, which load without torch."""
    env = {"PYTHONPROFILEIMPORTTIME": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    if command[-1] == "--help":
        assert done.returncode == 0, done.stderr[-2000:]
        assert "--cache-strategy" in done.stdout and "--hh-ratio" in done.stdout
    else:
        assert done.returncode == 2 and "invalid int value: 'http'" in done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "cache.streaming" in imported  # the declarations were read, and neither library
    assert not any(name.split(".")[0] in ("gradio", "torch") for name in imported)


def test_a_bad_flag_is_one_line_and_exit_2():
    done = subprocess.run([sys.executable, "mineworld.py", "--port", "http"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "invalid int value: 'http'" in done.stderr


def test_the_seeds_demo_flags_load_the_shipped_model_and_scene():
    import app

    args = app.parse_args([
        "--scene", str(SHIPPED / "scene" / "scene.mp4"),
        "--model_ckpt", str(SHIPPED / "model" / "model.safetensors"),
        "--config", str(SHIPPED / "model" / "config.yaml"),
        "--cache-strategy", "h2o", "--hh-ratio", "0.1",
    ])
    resources = app.load_resources(args)
    assert (resources.strategy, resources.params) == ("h2o", {"hh_ratio": 0.1})
    assert resources.model.config.context_frames == 8 and len(resources.scene.frames) > 8
