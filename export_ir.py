#!/usr/bin/env python3
"""Convert a Hugging Face checkpoint or GGUF file to an OpenVINO IR folder for ovchat.

Run ``python export_ir.py --help``; the work is done by :mod:`ovchat.export`.
"""

import sys

from ovchat.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
