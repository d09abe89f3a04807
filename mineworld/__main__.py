"""``python -m mineworld``: the demo (``app.py`` beside this package, in a checkout), with its
flags; ``python -m mineworld --help`` lists them."""

import runpy
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"

if __name__ == "__main__":
    # Run as app.py is run, so that --help and bad flags answer before gradio loads.
    runpy.run_path(str(APP), run_name="__main__")
