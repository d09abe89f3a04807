"""``python mineworld.py``: the demo, under the name the seed's instructions give it
(``--scene ... --model_ckpt ... --config ... --cache-strategy h2o --hh-ratio 0.1``); the same as
``python app.py``. ``import mineworld`` still finds the package beside this file: a package
wins over a module of the same name."""

import runpy

if __name__ == "__main__":
    runpy.run_module("mineworld", run_name="__main__")
