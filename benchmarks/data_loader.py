"""The issue's name for the loader benchmark: runs benchmarks/loader_speed.py (same options, same JSON last line)."""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[0] = str(Path(__file__).with_name("loader_speed.py"))
    runpy.run_path(sys.argv[0], run_name="__main__")
