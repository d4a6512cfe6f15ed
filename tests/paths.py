"""Where things are in the checkout, for tests in any folder."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "kernels" / "examples"
TOOLBOX = ROOT / "tests" / "backends" / "toolbox.py"  # a backend of every kind of method
