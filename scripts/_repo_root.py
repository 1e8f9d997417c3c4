"""Imported first by a script run as a file (`python scripts/NAME.py`): Python then puts scripts/, not the repository
root, on sys.path, so `import data` fails. This puts the root first; `python -m scripts.NAME` never imports it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
