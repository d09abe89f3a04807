"""The Gradio demo is not built yet (issue 5). Use inference.py or the Python API."""

import sys

if __name__ == "__main__":
    sys.exit("app.py: the interactive demo is not built yet; see README.md for what works now")
